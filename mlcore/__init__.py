"""What the edge and the data center share: data, shifts, models, frames, checkpoints, seeds.

Nothing here talks to the network; both systems import it, neither imports the other.
"""
