"""Tag keys shared by everything that must recognise this pipeline's resources.

The CDK app passes them to the Lambda functions as environment variables, so
this module stays the one place they are spelled.
"""

PIPELINE = "imagenet-staging:pipeline"
INSTANCE = "imagenet-staging:instance-id"
"""On a dataset snapshot: the download instance it was taken on."""
DATASET = "imagenet-staging:dataset"
MANIFEST = "imagenet-staging:manifest-sha256"
MANIFEST_URL = "imagenet-staging:manifest"
IMAGES = "imagenet-staging:images"
"""On a dataset snapshot: ``train=N,val=M``."""
BYTES = "imagenet-staging:backup-bytes"
"""With the other dataset tags: what the teardown function publishes if it gets there before the instance."""
PRODUCER = "imagenet-staging:produced-by"
OWNER = "imagenet-staging:owner-instance-id"
"""On a GPU dataset volume or the download data volume: the instance it belongs to."""
READY = "imagenet-staging:dataset-ready"
DATA_VOLUME = "imagenet-staging:data-volume"
"""On the download instance's data volume (value: the pipeline): what the scheduled DLM policy snapshots."""
SCHEDULED = "imagenet-staging:scheduled-snapshot-of"
"""On DLM's scheduled snapshots instead of PIPELINE, so nothing mistakes a half-done volume for the dataset."""
