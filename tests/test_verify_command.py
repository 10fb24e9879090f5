"""nnc stands alone (never imports tools/), and external decoders are verified as commands."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import nnc
from nnc.verify import CommandAdapter, CommandError, CommandProtocolError, verify_suite

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "conformance"
NNC_SERVE = [sys.executable, str(REPO / "tools" / "nnc_decoder.py"), "--serve"]


#: Functions that may use sys.path: the command line's import of the user's MODULE:FUNCTION from the current
#: folder, as ``python -m nnc`` would (nnc.cli._import_from_here).
SYS_PATH_ALLOWED = {"_import_from_here"}


def outside_reaches(source: str) -> list[str]:
    """Imports of tools/ or benchmarks/ and sys.path edits in one module's source (but in SYS_PATH_ALLOWED)."""
    found = []
    tree = ast.parse(source)
    allowed = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name in SYS_PATH_ALLOWED
               for n in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in ("tools", "benchmarks")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in ("tools", "benchmarks"):
                found.append(node.module)
        elif isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
            if id(node) not in allowed:
                found.append("sys.path")
    return found


def test_the_package_never_reaches_outside_itself():
    """nnc/ has no sys.path edits and never imports tools/ or benchmarks/."""
    offenders = {p.name: outside_reaches(p.read_text()) for p in (REPO / "nnc").glob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("source", ["import tools.oracle", "from tools.oracle.client import X",
                                    "import sys\nsys.path.insert(0, '.')",
                                    "def _import_from_here():\n    import tools.oracle",
                                    "def other():\n    sys.path.append('.')"])
def test_the_standalone_check_can_fail(source):
    assert outside_reaches(source)


def test_nnc_decoder_command_passes_the_suite():
    """nnc's reference decoder behind the command protocol passes every stream, must-fail ones included."""
    with CommandAdapter(NNC_SERVE) as adapter:
        results = verify_suite(SUITE, adapter)
    assert results and all(r.passed for r in results), [r for r in results if not r.passed][:3]


def test_cli_verify_decoder_command(tmp_path):
    r = subprocess.run([sys.executable, "-m", "nnc", "verify", str(SUITE), "--group", "profile-1",
                        "--decoder-command", " ".join(map(str, NNC_SERVE))], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "0 failed" in r.stdout


def test_a_wrong_decoder_command_fails_the_streams(tmp_path):
    """A command that returns other tensors fails the stream; verification does not trust it."""
    script = tmp_path / "liar.py"
    script.write_text(
        "import json, sys, numpy as np\n"
        "print(json.dumps({'ok': True, 'ready': True}), flush=True)\n"
        "for line in sys.stdin:\n"
        "    req = json.loads(line)\n"
        "    np.savez(req['npz'], w=np.zeros(3, np.float32))\n"
        "    print(json.dumps({'ok': True, 'names': ['w']}), flush=True)\n")
    with CommandAdapter([sys.executable, str(script)]) as adapter:
        results = verify_suite(SUITE, adapter, groups=["profile-1"])
    assert results and not any(r.passed for r in results)


def test_a_command_that_does_not_announce_itself_is_refused(tmp_path):
    with pytest.raises(RuntimeError, match="did not announce itself"):
        CommandAdapter([sys.executable, "-c", "print('hello')"])
    with pytest.raises(RuntimeError, match="cannot start the decoder command"):
        CommandAdapter([str(tmp_path / "missing-program")])
    r = subprocess.run([sys.executable, "-m", "nnc", "verify", str(SUITE), "--decoder-command",
                        f"{sys.executable} -c pass"], capture_output=True, text=True)
    assert r.returncode != 0 and "did not announce itself" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_command_that_dies_is_restarted(tmp_path):
    """A decoder that crashes on one stream fails that stream only."""
    script = tmp_path / "fragile.py"
    script.write_text(
        "import json, sys, numpy as np, nnc\n"
        "print(json.dumps({'ok': True, 'ready': True}), flush=True)\n"
        "for line in sys.stdin:\n"
        "    req = json.loads(line)\n"
        "    data = open(req['in'], 'rb').read()\n"
        "    if len(data) < 30: sys.exit(3)\n"
        "    out = nnc.decode(data)\n"
        "    np.savez(req['npz'], **out)\n"
        "    print(json.dumps({'ok': True, 'names': list(out)}), flush=True)\n")
    stream = nnc.encode({"w": [[1.0, 2.0]] * 8}, qp=-8)
    with CommandAdapter([sys.executable, str(script)]) as adapter:
        with pytest.raises(CommandProtocolError, match="exited"):  # a crash, not a rejection
            adapter(stream[:20])
        assert list(adapter(stream)) == ["w"]


@pytest.mark.oracle
def test_nncodec_decoder_command_agrees_with_the_sheets(oracle):
    """tools/nncodec_decoder.py decodes, through the protocol, every stream its sheet says NNCodec decodes."""
    manifest = json.loads((SUITE / "manifest.json").read_text())
    agreed = {e["name"] for e in manifest["streams"] if e["group"] != "must-fail"
              and json.loads((SUITE / e["sheet"]).read_text()).get("cross_checked_with_nncodec_2_1_3") == "yes"}
    assert agreed
    with CommandAdapter([sys.executable, str(REPO / "tools" / "nncodec_decoder.py")]) as adapter:
        results = verify_suite(SUITE, adapter, names=agreed)
    assert {r.name for r in results if r.passed} == agreed


@pytest.mark.oracle
def test_nncodec_decoder_command_skips_profile_0_streams(oracle):
    """NNCodec 2.1.3 reads every stream as profile 1: profile-0 (1st-edition) streams failed in it, reported as
    its failures (and profile-0 must-fail streams as passed); the command now says it does not decode them."""
    manifest = json.loads((SUITE / "manifest.json").read_text())
    profile_0 = {e["name"] for e in manifest["streams"] if e["profile"] == 0}
    assert profile_0
    with CommandAdapter([sys.executable, str(REPO / "tools" / "nncodec_decoder.py")]) as adapter:
        results = verify_suite(SUITE, adapter, names=profile_0)
    assert {r.name for r in results} == profile_0
    assert all(r.passed and r.detail.startswith("skipped: NNCodec 2.1.3 decodes profile 1") for r in results)


@pytest.mark.parametrize("manifest, words", [
    ("garbage", "not JSON"),
    ('{"streams": 5}', "no list of 'streams'"),
    ('{"streams": [{"name": "x", "group": "g", "file": "../../etc/passwd", "expected": {}}]}',
     "stream 0 ('x'): file '../../etc/passwd' is not a path inside the suite"),
    ('{"streams": [{"name": "x", "group": "must-fail", "file": "x.nnr", "expected_error": "os", "clause": "1"}]}',
     "'expected_error' must name a class of nnc.errors"),
    ('{"streams": [{"name": "x", "group": "g", "file": "x.nnr", "expected": {"tensors": [{"name": "w"}]}}]}',
     "'expected' must hold"),
    pytest.param("[" * 100_000 + "]" * 100_000, "nested too deeply", id="deep"),  # (a RecursionError before)
])
def test_a_malformed_manifest_is_one_line_naming_the_entry(tmp_path, manifest, words):
    # these ended in a JSONDecodeError or TypeError traceback
    (tmp_path / "manifest.json").write_text(manifest)
    r = subprocess.run([sys.executable, "-m", "nnc", "verify", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"nnc: error: {tmp_path / 'manifest.json'}: ") and words in r.stderr, r.stderr
    with pytest.raises(nnc.errors.ManifestError, match="manifest.json"):
        verify_suite(tmp_path)


def test_a_decoder_that_crashes_does_not_pass_must_fail_streams(tmp_path):
    """Before: a decoder command that exited on every stream (or replied garbage) passed every must-fail stream,
    its crash counted as a rejection."""
    from nnc.verify import verify_suite

    for body in ("sys.stdin.readline(); raise SystemExit(3)\n",
                 "for line in sys.stdin: print('not json', flush=True)\n"):
        script = tmp_path / "dead.py"
        script.write_text("import json, sys\nprint(json.dumps({'ok': True, 'ready': True}), flush=True)\n" + body)
        with CommandAdapter([sys.executable, str(script)]) as adapter:
            results = verify_suite(SUITE, decoder=adapter, groups=["must-fail"], names=["mf_empty", "mf_profile_7"])
        assert results and not any(r.passed for r in results), [(r.name, r.detail) for r in results]


def test_a_selected_update_is_verified_after_the_streams_before_it(tmp_path):
    """Before: `nnc verify --stream <update>` failed a correct decoder (the update's parent was not decoded)."""
    from nnc.verify import verify_suite

    manifest = json.loads((SUITE / "manifest.json").read_text())
    updates = [e["name"] for e in manifest["streams"] if (e.get("sequence") or {}).get("position", 0) > 0]
    assert updates
    results = verify_suite(SUITE, names=updates[-1:])
    assert [r.name for r in results] == updates[-1:] and all(r.passed for r in results), results


def test_a_manifest_file_with_a_nul_is_refused_in_one_line(tmp_path):
    import nnc.errors
    from nnc.verify import verify_suite

    manifest = json.loads((SUITE / "manifest.json").read_text())
    entry = dict(manifest["streams"][0], file=manifest["streams"][0]["file"] + "\u0000x")
    (tmp_path / "manifest.json").write_text(json.dumps({"streams": [entry]}))
    with pytest.raises(nnc.errors.ManifestError, match="not a path inside the suite"):
        verify_suite(tmp_path)


def _command(tmp_path, body: str, name: str = "dec.py") -> list:
    script = tmp_path / name
    script.write_text("import json, sys, time, zipfile, numpy as np\n"
                      "print(json.dumps({'ok': True, 'ready': True}), flush=True)\n"
                      "for line in sys.stdin:\n    req = json.loads(line)\n" + body)
    return [sys.executable, str(script)]


def test_a_decoder_whose_output_cannot_be_read_fails_and_never_skips(tmp_path):
    """Before: an .npz whose reading raised NotImplementedError (an unknown zip method) was taken for the adapter's
    'unsupported', and every stream, must-fail ones included, was skipped: exit 0."""
    body = ("    with zipfile.ZipFile(req['npz'], 'w') as z: z.writestr('w.npy', b'x')\n"
            "    data = bytearray(open(req['npz'], 'rb').read())\n"
            "    for sig, at in ((b'PK\\x03\\x04', 8), (b'PK\\x01\\x02', 10)):\n"  # compression method 9: deflate64
            "        i = data.find(sig)\n"
            "        data[i + at:i + at + 2] = (9).to_bytes(2, 'little')\n"
            "    open(req['npz'], 'wb').write(data)\n"
            "    print(json.dumps({'ok': True, 'names': ['w']}), flush=True)\n")
    with CommandAdapter(_command(tmp_path, body)) as adapter:
        results = verify_suite(SUITE, adapter, names=["p1_urq_so0", "mf_empty"])
    assert results and not any(r.passed for r in results), [(r.name, r.detail) for r in results]
    assert all("cannot be read" in r.detail for r in results if r.name == "p1_urq_so0")


def test_unsupported_streams_are_skipped_and_a_run_of_skips_alone_fails(tmp_path):
    cmd = _command(tmp_path, "    print(json.dumps({'ok': False, 'unsupported': 'no DQ here'}), flush=True)\n")
    with CommandAdapter(cmd) as adapter:
        results = verify_suite(SUITE, adapter, names=["p1_urq_so0"])
    assert [r.detail for r in results] == ["skipped: no DQ here"]
    r = subprocess.run([sys.executable, "-m", "nnc", "verify", str(SUITE), "--stream", "p1_urq_so0",
                        "--decoder-command", " ".join(cmd)], capture_output=True, text=True)
    assert r.returncode == 1 and "every stream to decode was skipped" in r.stderr
    # must-fail streams alone (before: "0 passed, 0 failed, 66 skipped", exit 0)
    r = subprocess.run([sys.executable, "-m", "nnc", "verify", str(SUITE), "--stream", "mf_empty",
                        "--decoder-command", " ".join(cmd)], capture_output=True, text=True)
    assert r.returncode == 1 and "every stream was skipped" in r.stderr


def test_a_decoder_that_skips_every_stream_to_decode_fails_though_it_rejects_must_fail_ones(tmp_path):
    """Before: 'unsupported' for every valid stream and an error for every invalid one: "63 passed, 138 skipped",
    exit 0, and every --json entry "passed": true."""
    body = ("    try:\n        import nnc; nnc.decode(open(req['in'], 'rb').read())\n"
            "        print(json.dumps({'ok': False, 'unsupported': 'nothing'}), flush=True)\n"
            "    except Exception as exc:\n        print(json.dumps({'ok': False, 'error': str(exc)}), flush=True)\n")
    cmd = _command(tmp_path, body)
    r = subprocess.run([sys.executable, "-m", "nnc", "verify", str(SUITE), "--stream", "p1_urq_so0", "--stream",
                        "mf_empty", "--decoder-command", " ".join(cmd), "--json"], capture_output=True, text=True)
    assert r.returncode == 1 and "every stream to decode was skipped" in r.stderr
    entries = {e["name"]: e for e in json.loads(r.stdout)}
    assert entries["p1_urq_so0"]["skipped"] and not entries["p1_urq_so0"]["passed"] and entries["mf_empty"]["passed"]


@pytest.mark.parametrize("command, words", [("", "is empty"), ("   ", "is empty"), ("'x", "cannot be split")])
def test_a_decoder_command_that_names_no_command_is_a_usage_error(command, words, capsys):
    """Before: "" checked nnc's own decoder and passed; "  " and "'x" were tracebacks."""
    from nnc.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["verify", str(SUITE), "--stream", "p1_urq_so0", "--decoder-command", command])
    assert exit_.value.code == 2 and words in capsys.readouterr().err


def test_a_sequence_is_decoded_in_position_order_whatever_the_manifest_order(tmp_path):
    """Before: in manifest order: a suite listing an update before its base failed a correct decoder."""
    import shutil

    suite = tmp_path / "suite"
    shutil.copytree(SUITE, suite)
    manifest = json.loads((suite / "manifest.json").read_text())
    streams = manifest["streams"]
    seq = next(e["sequence"]["id"] for e in streams if (e.get("sequence") or {}).get("position") == 1)
    members = [i for i, e in enumerate(streams) if (e.get("sequence") or {}).get("id") == seq]
    streams[members[0]], streams[members[1]] = streams[members[1]], streams[members[0]]
    (suite / "manifest.json").write_text(json.dumps(manifest))
    names = [streams[i]["name"] for i in members]
    results = verify_suite(suite, names=names)
    assert results and all(r.passed for r in results), [(r.name, r.detail) for r in results]
    streams[members[0]]["sequence"]["position"] = streams[members[1]]["sequence"]["position"]
    (suite / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(nnc.errors.ManifestError, match="positions"):
        verify_suite(suite, names=names)


def test_a_decoder_that_hangs_or_replies_out_of_step_fails_the_stream(tmp_path):
    """Before: a decoder that never replied made nnc verify wait for ever; an extra reply line shifted every
    later verdict onto the next stream."""
    hang = _command(tmp_path, "    time.sleep(3600)\n", "hang.py")
    with CommandAdapter(hang, timeout=2) as adapter:
        with pytest.raises(CommandProtocolError, match="no reply within 2 s"):
            adapter(nnc.encode({"w": [[1.0, 2.0]] * 2}))
    stale = _command(tmp_path, "    print(json.dumps({'ok': False, 'error': 'no', 'id': req['id'] - 1}), flush=True)\n",
                     "stale.py")
    with CommandAdapter(stale) as adapter:
        with pytest.raises(CommandProtocolError, match="replied to request 0, not 1"):
            adapter(nnc.encode({"w": [[1.0, 2.0]] * 2}))
    r = subprocess.run([sys.executable, "-m", "nnc", "verify", str(SUITE), "--stream", "p1_urq_so0",
                        "--decoder-command", " ".join(hang), "--timeout", "2"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and "0 passed, 1 failed" in r.stdout


def test_a_manifest_file_that_leads_outside_the_suite_or_to_a_device_is_refused(tmp_path):
    import nnc.errors

    manifest = json.loads((SUITE / "manifest.json").read_text())
    entry = next(e for e in manifest["streams"] if e["name"] == "p1_urq_so0")
    (tmp_path / "out.nnr").symlink_to(SUITE / entry["file"])
    (tmp_path / "dev.nnr").symlink_to("/dev/zero")
    for name, words in (("out.nnr", "leads outside the suite"), ("dev.nnr", "leads outside the suite")):
        suite = tmp_path / name.split(".")[0]
        suite.mkdir()
        (suite / name).symlink_to(tmp_path / name)
        (suite / "manifest.json").write_text(json.dumps({"streams": [dict(entry, file=name)]}))
        with pytest.raises(nnc.errors.ManifestError, match=words):
            verify_suite(suite)
    fifo_suite = tmp_path / "fifo"
    fifo_suite.mkdir()
    import os

    os.mkfifo(fifo_suite / "f.nnr")
    (fifo_suite / "manifest.json").write_text(json.dumps({"streams": [dict(entry, file="f.nnr")]}))
    with pytest.raises(nnc.errors.ManifestError, match="not a regular file"):
        verify_suite(fifo_suite)


def test_the_repositorys_decoder_commands_echo_the_request_id(tmp_path):
    """tools/nnc_decoder.py --serve answers with the request's id, so an out-of-step reply is caught (the
    NNCodec worker does the same, checked where the oracle is set up: test_nncodec_decoder_command_agrees...)."""
    stream = tmp_path / "s.nnr"
    stream.write_bytes(nnc.encode({"w": [[1.0, 2.0]] * 2}))
    request = json.dumps({"op": "decompress", "in": str(stream), "npz": str(tmp_path / "o.npz"), "sequence": None,
                          "id": 7}) + "\n" + json.dumps({"op": "decompress", "in": str(tmp_path / "missing.nnr"),
                                                         "npz": str(tmp_path / "p.npz"), "id": 8}) + "\n"
    r = subprocess.run(NNC_SERVE, input=request, capture_output=True, text=True, timeout=120)
    replies = [json.loads(line) for line in r.stdout.splitlines()]
    assert replies[0] == {"ok": True, "ready": True}
    assert replies[1]["ok"] is True and replies[1]["id"] == 7
    assert replies[2]["ok"] is False and replies[2]["id"] == 8


def test_a_manifest_naming_a_stream_twice_is_refused(tmp_path):
    """Before: both entries were verified ("202 passed" for 201 streams)."""
    import shutil

    suite = tmp_path / "suite"
    shutil.copytree(SUITE, suite)
    manifest = json.loads((suite / "manifest.json").read_text())
    manifest["streams"].append(dict(manifest["streams"][0]))
    (suite / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(nnc.errors.ManifestError, match="another stream has this name"):
        verify_suite(suite)


def test_timeout_without_a_decoder_command_is_a_usage_error(capsys):
    from nnc.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["verify", str(SUITE), "--stream", "p1_urq_so0", "--timeout", "5"])
    assert exit_.value.code == 2 and "--timeout is for a --decoder-command" in capsys.readouterr().err


@pytest.mark.parametrize("reply", ["{}", "{'ok': 'yes'}", "{'ok': False}", "{'ok': False, 'error': 3}"])
def test_a_reply_that_is_none_of_the_protocols_fails_a_must_fail_stream(tmp_path, reply):
    """Before: any reply without "ok": true was taken for a rejection, so a command answering {} to every request
    passed all must-fail streams (exit 0)."""
    cmd = _command(tmp_path, f"    print(json.dumps({reply}), flush=True)\n")
    with CommandAdapter(cmd) as adapter:
        results = verify_suite(SUITE, adapter, names=["mf_empty", "mf_scan_order_5"])
    assert len(results) == 2 and not any(r.passed for r in results)
    assert all("none of the protocol's replies" in r.detail for r in results), [r.detail for r in results]


def test_a_stray_line_restarts_the_command_so_later_replies_stay_in_step(tmp_path):
    """Before: after a line that is not JSON the command kept running, and each later stream read the reply to the
    one before it: a decoder that accepts everything passed must-fail streams by the rejection of another."""
    body = ("    import os\n"
            "    if not os.path.exists(req['in'] + '.seen') and req['id'] == 1:\n"
            "        print('decoder says hello', flush=True)\n"
            "    print(json.dumps({'ok': False, 'error': 'rejected ' + str(req['id'])}), flush=True)\n")
    with CommandAdapter(_command(tmp_path, body)) as adapter:
        results = verify_suite(SUITE, adapter, names=["mf_empty", "mf_scan_order_5", "mf_garbage_payload"])
    verdicts = {r.name: (r.passed, r.detail) for r in results}
    assert not verdicts["mf_empty"][0] and "not a JSON object" in verdicts["mf_empty"][1]
    # the restarted command counts from its own first request: each reply is to its own stream
    assert verdicts["mf_scan_order_5"][0] and verdicts["mf_garbage_payload"][0], verdicts


def test_a_run_with_a_skipped_stream_does_not_show_conformance(tmp_path):
    """Before: a decoder that decoded one stream and said 'unsupported' to the rest: "1 passed, 0 failed, 203
    skipped", exit 0."""
    body = ("    if req['id'] == 1:\n"
            "        import nnc; out = nnc.decode(open(req['in'], 'rb').read()); np.savez(req['npz'], **out)\n"
            "        print(json.dumps({'ok': True, 'names': list(out)}), flush=True)\n"
            "    else:\n        print(json.dumps({'ok': False, 'unsupported': 'not this one'}), flush=True)\n")
    cmd = _command(tmp_path, body)
    r = subprocess.run([sys.executable, "-m", "nnc", "verify", str(SUITE), "--stream", "p1_urq_so0", "--stream",
                        "mf_empty", "--decoder-command", " ".join(cmd)], capture_output=True, text=True)
    assert r.returncode == 1 and "1 stream(s) skipped" in r.stderr and "conformance is not shown" in r.stderr
    assert "1 passed, 0 failed, 1 skipped" in r.stdout
