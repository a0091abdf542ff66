"""The AWS side: the boto3 client wrapper, the inventory read from AWS and the
plan executor."""
