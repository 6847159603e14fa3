"""``make demo``: the whole job, end to end, on the embedded default.

Synthetic ILSVRC2012-format archives (with the awkward real cases) are served
by a local HTTP server that demands credentials and limits each connection's
bandwidth; the credentials sit in a Secrets Manager secret on an AWS emulator
(moto) on 127.0.0.1.  The engine then runs exactly as on the download
instance: fetch (parallel, MD5-checked) -> organise -> pack -> verify ->
inspect.  Finally MXNet's own readers open the output.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bootstrap.aws import client
from bootstrap.cli import configure_logging
from bootstrap.config import load_config
from bootstrap.stages import Engine
from tests.fixtures.aws_emulator import emulated_aws
from tests.fixtures.http_server import ArchiveServer, ServerOptions
from tests.fixtures.synthetic_imagenet import Spec, generate

OUT = Path("demo-output")
SECRET = "imagenet-staging/source-credentials"
USER, ACCESS_KEY = "demo-user", "demo-access-key-not-a-secret"


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def check_with_mxnet(recordio: Path) -> dict[str, int]:
    import mxnet as mx

    counts = {}
    for split in ("train", "val"):
        rec = recordio / f"{split}.rec"
        reader = mx.recordio.MXIndexedRecordIO(str(rec.with_suffix(".idx")), str(rec), "r")
        labels = {mx.recordio.unpack(reader.read_idx(k))[0].label for k in reader.keys}
        it = mx.io.ImageRecordIter(path_imgrec=str(rec), path_imgidx=str(rec.with_suffix(".idx")),
                                   data_shape=(3, 64, 64), resize=72, batch_size=16)  # fmt: skip
        iterated = sum(batch.data[0].shape[0] - batch.pad for batch in it)
        print(f"  {split}: MXIndexedRecordIO read {len(reader.keys)} records in {len(labels)} classes; "
              f"ImageRecordIter decoded {iterated}")  # fmt: skip
        counts[split] = len(reader.keys)
    return counts


def main() -> int:
    configure_logging(verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    shutil.rmtree(OUT, ignore_errors=True)
    started = time.monotonic()

    banner("1/4 generate synthetic ILSVRC2012 archives (exact layout, awkward cases included)")
    gen = generate(OUT / "source", Spec(classes=16, train_per_class=25, val_per_class=4))
    for path in sorted((OUT / "source").iterdir()):
        print(f"  {path}  {path.stat().st_size:,} bytes")

    with (
        emulated_aws() as endpoint,
        ArchiveServer(
            OUT / "source", ServerOptions(username=USER, password=ACCESS_KEY, bytes_per_second=4 << 20)
        ) as server,
    ):
        banner("2/4 AWS emulator and HTTP server on 127.0.0.1")
        client("secretsmanager").create_secret(
            Name=SECRET, SecretString=json.dumps({"username": USER, "access_key": ACCESS_KEY})
        )
        print(f"  AWS emulator (moto) at {endpoint}; source credentials in secret {SECRET}")
        print(f"  archives at {server.url} (basic auth, 4 MiB/s per connection)")

        banner("3/4 python -m bootstrap run (fetch, organise, pack, verify, inspect)")
        config_path = OUT / "bootstrap-config.json"
        config_path.write_text(json.dumps({
            "data_dir": str(OUT / "data"), "source": server.url, "source_secret": SECRET,
            "dataset_table": str(gen.table), "resize": 128, "quality": 90, "max_failure_rate": 0.01,
        }, indent=2))  # fmt: skip
        command = [sys.executable, "-m", "bootstrap", "run", "--config", str(config_path)]
        print("  $ " + " ".join(["python", *command[1:]]), flush=True)
        result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
        if result.returncode != 0:
            logging.error("the engine failed (exit %d); see its log above", result.returncode)
            return result.returncode
        summary = json.loads(result.stdout)
        print(f"  {server.requests} HTTP requests, {server.body_bytes:,} body bytes served")
    engine = Engine(load_config(config_path, {}))

    banner("4/4 check the output with MXNet's own readers")
    counts = check_with_mxnet(engine.paths.recordio)
    expected = {s: v["packed"] for s, v in summary["splits"].items()}
    if counts != expected:
        logging.error("mxnet read %s but the engine packed %s", counts, expected)
        return 1

    banner(f"done in {time.monotonic() - started:.0f}s; where everything is")
    data = engine.paths
    print(f"  archives (MD5-verified):    {data.archives}")
    for split, info in summary["splits"].items():
        files = ",".join(info["files"])
        print(f"  {split:5} RecordIO:             {data.recordio}/{{{files}}}  ({info['packed']} images)")
        listed = Path(info["failures"]).read_text().splitlines()[1:]
        print(f"  {split:5} failures ({len(listed)} listed): {info['failures']}")
        for line in listed:
            print(f"      {line}")
    print(f"  classes:                    {data.recordio / 'synsets.txt'}")
    print(f"  contact sheets:             {data.recordio}/contact_sheet_{{train,val}}.png")
    print(f"  status file:                {data.status}")
    print(f"  config used:                {config_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
