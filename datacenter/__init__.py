"""The data center: drift checks, model-zoo selection and retraining, served over the protocol."""
