"""launch/: shellcheck-clean; `tpu_pod.sh --dry-run` prints the commands the pod walkthrough in
docs/tpu-pods.md relies on; slurm.sbatch and local_multiprocess.sh pass their arguments through to
stand-in `srun` / `clapcomp` programs."""

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = ["tpu_pod.sh", "slurm.sbatch", "local_multiprocess.sh"]
DOC = REPO / "docs" / "tpu-pods.md"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)")
@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_clean(script):
    result = subprocess.run(["shellcheck", str(LAUNCH / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _dry_run(*args: str, **env: str) -> tuple[int, list[list[str]], str]:
    """`tpu_pod.sh --dry-run ARGS`: (exit status, each printed command as its words, stderr)."""
    result = subprocess.run(
        ["bash", str(LAUNCH / "tpu_pod.sh"), "--dry-run", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=30,
    )
    return result.returncode, [shlex.split(line) for line in result.stdout.splitlines()], result.stderr


def _remote(commands: list[list[str]]) -> tuple[str, list[list[str]]]:
    """The one `gcloud ... ssh --worker=W --command C` among commands: (W, C split at && into words)."""
    (ssh,) = [c for c in commands if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
    worker = next(a.removeprefix("--worker=") for a in ssh if a.startswith("--worker="))
    remote = ssh[ssh.index("--command") + 1]
    return worker, [shlex.split(part) for part in remote.split(" && ")]


def test_setup_installs_the_train_and_tpu_extras():
    rc, commands, err = _dry_run("setup")
    assert rc == 0, err
    archive, scp = commands[0], commands[1]
    assert archive[:2] == ["git", "-C"] and archive[3] == "archive" and archive[-1] == "HEAD"
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and archive[archive.index("-o") + 1] in scp
    worker, remote = _remote(commands)
    assert worker == "all"
    pips = [c for c in remote if c[:2] == [".venv/bin/pip", "install"]]
    # first the CPU side at CI's versions, then the tpu extra with its own jax line (no constraints)
    assert [c[c.index("-e") + 1] for c in pips] == [".[train,gcs]", ".[train,tpu]"]
    assert pips[0][pips[0].index("-c") + 1] == "constraints.txt" and "-c" not in pips[1]
    assert ["python3.11", "-m", "venv", ".venv"] in remote
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("jax[tpu]") for r in extras["tpu"]) and any(
        r.startswith("ml-collections") for r in extras["train"]
    )
    assert (REPO / "constraints.txt").is_file()


def test_setup_python_is_configurable():
    _, commands, _ = _dry_run("setup", PYTHON="python3.12")
    _, remote = _remote(commands)
    assert ["python3.12", "-m", "venv", ".venv"] in remote and "python3.12-venv" in [w for part in remote for w in part]


def test_create_and_delete():
    rc, commands, err = _dry_run("create", SPOT="1", TPU_NAME="pod", ZONE="us-west4-a", ACCELERATOR_TYPE="v5litepod-16")
    assert rc == 0, err
    (create,) = commands
    assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pod"] and create[-1] == "--spot"
    assert create[create.index("--zone") + 1] == "us-west4-a"
    assert create[create.index("--accelerator-type") + 1] == "v5litepod-16"
    _, (create,), _ = _dry_run("create")
    assert "--spot" not in create
    _, (delete,), _ = _dry_run("delete", TPU_NAME="pod")
    assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "pod"]


def test_train_passes_config_workdir_and_overrides_through():
    flags = ["--config.data.train=/mnt/b/data/train", "--config.note=two words", "--config.lr=1e-4"]
    rc, commands, err = _dry_run("train", "configs/clap_htsat_roberta.py:dtype=bfloat16", "/mnt/b/runs/x", *flags)
    assert rc == 0, err
    worker, remote = _remote(commands)
    assert worker == "all"
    assert remote == [
        ["cd", "clapcomp"],
        [".venv/bin/clapcomp", "train", "--config", "configs/clap_htsat_roberta.py:dtype=bfloat16"]
        + ["--workdir", "/mnt/b/runs/x", *flags],
    ]


def test_export_runs_on_worker_0():
    rc, commands, err = _dry_run("export", "/mnt/b/runs/x", "/mnt/b/export", "--format", "safetensors")
    assert rc == 0, err
    worker, remote = _remote(commands)
    assert worker == "0"
    assert remote[1] == [".venv/bin/clapcomp", "export", "--model", "/mnt/b/runs/x", "--out", "/mnt/b/export"] + [
        "--format",
        "safetensors",
    ]


def test_mount_bucket():
    rc, commands, err = _dry_run("mount", "gs://my-bkt")
    assert rc == 0, err
    worker, remote = _remote(commands)
    assert worker == "all"
    words = [w for part in remote for w in part]
    assert ["sudo", "mkdir", "-p", "/mnt/my-bkt"] in remote
    mount = words[words.index("gcsfuse", words.index("mountpoint")) :]  # after the install-if-missing part
    assert mount[:5] == ["gcsfuse", "--implicit-dirs", "--rename-dir-limit=1000000", "my-bkt", "/mnt/my-bkt;"]
    assert _dry_run("mount", "Bad Name")[0] == 2


def test_gs_paths_pass_through_unchanged():
    rc, commands, err = _dry_run("train", "configs/tiny.py", "gs://bkt/run", "--config.data.train=/mnt/bkt/recs")
    assert rc == 0, err
    assert _remote(commands)[1][1][4:] == ["--workdir", "gs://bkt/run", "--config.data.train=/mnt/bkt/recs"]
    rc, commands, err = _dry_run("export", "gs://bkt/run", "gs://bkt/export")
    assert rc == 0, err
    assert _remote(commands)[1][1][2:] == ["--model", "gs://bkt/run", "--out", "gs://bkt/export"]


@pytest.mark.parametrize("args", [[], ["bogus"], ["train", "configs/tiny.py"], ["export", "/mnt/b/run"]])
def test_usage_errors(args):
    rc, commands, err = _dry_run(*args)
    assert rc == 2 and commands == [] and "usage" in err


def test_every_documented_command_dry_runs():
    """Each `launch/tpu_pod.sh ...` line of docs/tpu-pods.md, with --dry-run, prints commands and exits 0."""
    lines = [line.split("  #")[0].strip() for line in DOC.read_text().splitlines()]
    documented = [shlex.split(line)[1:] for line in lines if line.startswith("launch/tpu_pod.sh ")]
    steps = {args[0] for args in documented}
    assert {"create", "setup", "mount", "train", "export", "delete"} <= steps
    for args in documented:
        rc, commands, err = _dry_run(*args)
        assert rc == 0 and commands, (args, err)


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _stand_ins(tmp_path: Path) -> Path:
    """A bin/ with a `clapcomp` that prints its arguments and environment, and the test's python beside it
    (the train extra's packages importable, as slurm.sbatch checks)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # one write per line: the processes of local_multiprocess.sh print at the same time
    _executable(
        bin_dir / "clapcomp",
        '#!/usr/bin/env bash\nline=$(printf "%s|" "$@")\necho "${line}CUDA=${CUDA_VISIBLE_DEVICES:-} XLA=${XLA_FLAGS:-}"\n',
    )
    _executable(bin_dir / "python", f'#!/usr/bin/env bash\nexec {shlex.quote(sys.executable)} "$@"\n')
    return bin_dir


def test_slurm_passes_arguments_to_every_task(tmp_path):
    bin_dir = _stand_ins(tmp_path)
    # srun: drop its options, run the task as SLURM local task 3
    _executable(
        bin_dir / "srun", '#!/usr/bin/env bash\nwhile [[ $1 == -* ]]; do shift; done\nSLURM_LOCALID=3 exec "$@"\n'
    )
    result = subprocess.run(
        ["bash", str(LAUNCH / "slurm.sbatch"), "c.py:arg", "runs/x", "--config.a=1", "--config.b=two words"],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(
        "train|--config|c.py:arg|--workdir|runs/x|--config.a=1|--config.b=two words|"
    )
    assert "CUDA=3 " in result.stdout


def test_slurm_stops_without_the_train_extra(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "clapcomp", "#!/usr/bin/env bash\nexit 0\n")
    _executable(bin_dir / "python", "#!/usr/bin/env bash\nexit 1\n")  # an environment without ml_collections
    result = subprocess.run(
        ["bash", str(LAUNCH / "slurm.sbatch"), "c.py", "runs/x"],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        timeout=60,
    )
    assert result.returncode == 2 and ".[train,gpu]" in result.stderr


def test_local_multiprocess_starts_n_processes_of_one_job(tmp_path):
    bin_dir = _stand_ins(tmp_path)
    result = subprocess.run(
        ["bash", str(LAUNCH / "local_multiprocess.sh"), "3", "--config", "configs/tiny.py", "--workdir", "runs/mp"],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DEVICES_PER_PROCESS": "2"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    runs = sorted(result.stdout.splitlines())
    assert len(runs) == 3
    coordinators = set()
    for i, run in enumerate(runs):
        args, env = run.rsplit("|", 1)
        args = args.split("|")
        assert args[:5] == ["train", "--config", "configs/tiny.py", "--workdir", "runs/mp"]
        assert args[6:] == ["--num_processes=3", f"--process_id={i}"]
        coordinators.add(args[5])
        assert "XLA=--xla_force_host_platform_device_count=2" in env
    (coordinator,) = coordinators
    assert re.fullmatch(r"--coordinator=127\.0\.0\.1:\d+", coordinator)


@pytest.mark.parametrize("args", [["setup"], ["train", "configs/tiny.py", "/mnt/b/run", "--config.note=a b"]])
def test_without_dry_run_it_runs_what_dry_run_prints(tmp_path, args):
    """A stand-in gcloud logs each call's words; they equal the dry run's gcloud lines (setup: git archive really runs)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "gcloud.log"
    _executable(bin_dir / "gcloud", f'#!/usr/bin/env bash\necho "${{*@Q}}" >> {shlex.quote(str(log))}\n')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(tmp_path)}
    result = subprocess.run(["bash", str(LAUNCH / "tpu_pod.sh"), *args], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    ran = [["gcloud", *shlex.split(line)] for line in log.read_text().splitlines()]
    _, printed, _ = _dry_run(*args, TMPDIR=str(tmp_path))
    assert ran == [c for c in printed if c[0] == "gcloud"]
    if args == ["setup"]:
        listing = subprocess.run(["tar", "-tzf", str(tmp_path / "clapcomp-src.tar.gz")], capture_output=True, text=True)
        assert {"pyproject.toml", "constraints.txt", "launch/tpu_pod.sh"} <= set(listing.stdout.split())
