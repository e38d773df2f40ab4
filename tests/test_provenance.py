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


# /proc/cpuinfo of the 2-core EPYCs this project has run on (abridged flag lists).
_AVX2_EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni vaes
"""
_BF16_EPYC = """processor\t: 0
cpu family\t: 26
model name\t: AMD EPYC 9B45
flags\t\t: fpu sse2 fma avx avx2 avx512f avx512_vnni avx512_bf16 avx512_fp16
"""
_ZEN4_EPYC = """processor\t: 0
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu sse2 fma avx avx2 avx512f avx512_vnni avx512_bf16
"""
_ARM = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes sve bf16 i8mm
"""


def test_cpu_names_the_features_that_set_bf16_speed(tmp_path):
  for name, text, features, units in [
      ("avx2", _AVX2_EPYC, ["avx2", "fma"], False),
      ("bf16", _BF16_EPYC, ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"], True),
      ("zen4", _ZEN4_EPYC, ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"], True),
      ("arm", _ARM, ["bf16"], True)]:
    path = tmp_path / name
    path.write_text(text + text.replace("processor\t: 0", "processor\t: 1"))
    found = provenance.cpu(path)
    assert found["features"] == features and found["bf16_units"] is units, name
  assert provenance.cpu(tmp_path / "avx2")["model"] == "AMD EPYC"
  # The same model name; the family and model numbers tell the machines apart.
  assert [(provenance.cpu(tmp_path / n)["family"], provenance.cpu(tmp_path / n)["model_id"])
          for n in ("avx2", "zen4", "bf16", "arm")] == [(25, 1), (25, 17), (26, None),
                                                        (None, None)]
  missing = provenance.cpu(tmp_path / "absent")
  assert missing["features"] is None and missing["bf16_units"] is None and missing["model"]
  assert missing["family"] is None and missing["model_id"] is None
  assert provenance.record()["machine"]["cpu"] == provenance.cpu()
