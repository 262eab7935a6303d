"""The learning path: network, model bundle, patch shards, DatasetCreator and Trainer."""
