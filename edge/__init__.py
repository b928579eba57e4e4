"""The edge: runs the model on incoming batches, asks the data center, queries labels."""
