"""Lambda runtime code: plain Python + boto3, deployed as assets, tested against moto."""
