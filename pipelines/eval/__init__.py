"""Evaluation: inference, the eval runner, parallel eval with Ray Data, submissions."""
