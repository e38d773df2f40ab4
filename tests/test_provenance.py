import json
import subprocess

import jax

from ftjax import provenance


def test_record_names_versions_commit_and_machine(tmp_path):
  record = provenance.record(("surely-not-a-package",))
  json.dumps(record)  # written as JSON by every caller
  versions = record["versions"]
  assert versions["jax"] == jax.__version__ and versions["python"].count(".") == 2
  for name in ("flax", "optax", "orbax-checkpoint", "transformers", "numpy"):
    assert versions[name], name
  assert versions["surely-not-a-package"] is None
  head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=provenance._ROOT, capture_output=True,
                        text=True).stdout.strip()
  assert record["git_commit"].removesuffix("-dirty") == head
  assert provenance.git_commit(tmp_path) is None  # not a repository
  machine = record["machine"]
  assert machine["cpu_count"] >= 1 and machine["devices"] == [str(d) for d in jax.devices()]
  assert machine["platform"] and machine["backend"] == jax.default_backend()


def test_peak_rss_is_this_process_high_water_mark():
  before = provenance.peak_rss_bytes()
  grown = bytearray(64 * 2**20)  # touched: resident
  after = provenance.peak_rss_bytes()
  del grown
  assert after >= before > 0 and after >= 64 * 2**20
