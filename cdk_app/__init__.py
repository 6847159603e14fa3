"""The AWS CDK app (issue 3). ``functions/`` holds the Lambda runtime code, which CDK code never imports."""
