#!/usr/bin/env bash
# The sweep against real engines (issue 23): a single-node SLURM cluster (munged, slurmctld,
# slurmd; no accounting database, so the squeue/scontrol fallback is what runs) and a local Ray
# head, both on loopback, each running 2-cell sweeps. SLURM: a bad partition and a missing
# time limit stop in one line with nothing submitted; a 2-cell training sweep finishes and
# resumes; a cancelled cell is named cancelled and the next run does only it; a killed sweep's
# jobs are adopted, not submitted twice; a cell signalled as SLURM does before its time limit is
# requeued, resumes from its last epoch and ends with the result of an uninterrupted run;
# --status. Ray (token authentication on): a 2-cell sweep through ray://, resumed through the
# GCS address; with the head stopped, ray://, the GCS address and auto (the stopped head's
# address recorded, then none) each fail in one line.
#
#   bash scripts/test_cluster.sh          # WORK=folder keeps everything there (default: temp)
#   PARTS=ray bash scripts/test_cluster.sh     # one part: slurm or ray
#
# Every daemon is started here with its PID file under $WORK/run and stopped by that PID (Ray's
# head runs in its own session with --block, and is stopped with its process group). Nothing
# outside $WORK is written: the daemons read $WORK/slurm.conf ($SLURM_CONF) and a munge key
# made for this run. Needs root, Debian's slurm-wlm and munge packages, and the [slurm,ray]
# extras; elsewhere it prints "SKIP: <reason>" and exits 0. Exit 1 when a check fails.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${MVFA_VENV:-$REPO/.venv}/bin/python

skip() { echo "SKIP: $*"; exit 0; }
[ "$(id -u)" = 0 ] || skip "needs root (it starts munged, slurmctld and slurmd)"
for binary in /usr/sbin/munged /usr/sbin/mungekey /usr/sbin/slurmctld /usr/sbin/slurmd \
              /usr/bin/sbatch /usr/bin/squeue; do
    [ -x "$binary" ] || skip "$binary is missing (apt-get install slurm-wlm munge)"
done
[ -x "$PY" ] || skip "no Python at $PY (set MVFA_VENV to the project's venv)"
"$PY" -c "import submitit, ray, papermill" 2>/dev/null \
    || skip "the [slurm,ray] extras are not installed in $PY (pip install -e '.[slurm,ray]')"

WORK=${WORK:-$(mktemp -d)}
RUN=$WORK/run
CPUS=$(getconf _NPROCESSORS_ONLN)     # (nproc would read OMP_NUM_THREADS, set below)
mkdir -p "$RUN" "$WORK"/{state,spool,log,ray}
export SLURM_CONF=$WORK/slurm.conf PYTHONPATH=$REPO OMP_NUM_THREADS=1 TQDM_DISABLE=1
export HF_HUB_OFFLINE=1 RAY_TMPDIR=$WORK/ray
PASSES=0; FAILS=0
say() { printf '\n### %s\n' "$*"; }
check() { # check NAME COMMAND...: PASS or FAIL, counted
    local name=$1; shift
    if "$@"; then echo "CHECK PASS: $name"; PASSES=$((PASSES + 1));
    else echo "CHECK FAIL: $name"; FAILS=$((FAILS + 1)); fi
}
sweep() { "$PY" -m mvfa_lite sweep "$@"; }
wait_for() { # wait_for SECONDS COMMAND...
    local seconds=$1; shift
    for _ in $(seq "$seconds"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
    return 1
}
stop_pid() { # stop_pid FILE [GROUP]: TERM the PID in FILE (its process group with GROUP)
    [ -f "$1" ] || return 0
    local pid; pid=$(cat "$1")
    kill -0 "$pid" 2>/dev/null || return 0
    echo "stopping $(ps -o comm= -p "$pid") (pid $pid)"
    if [ -n "${2:-}" ]; then kill -TERM -- "-$pid"; else kill -TERM "$pid"; fi
    for _ in $(seq 90); do kill -0 "$pid" 2>/dev/null || return 0; sleep 1; done
    echo "  still alive after 90 s: pid $pid"
}
stop_all() {
    say "stop: every daemon started here, by PID (the jobs left cancelled first)"
    for pid in $BACKGROUND; do kill -0 "$pid" 2>/dev/null && kill -TERM "$pid"; done
    stop_pid "$RUN/ray.pid" group
    if [ -f "$RUN/slurmctld.pid" ] && scontrol ping >/dev/null 2>&1; then
        scancel --me
        wait_for 60 bash -c '[ -z "$(squeue -h --me)" ]' || echo "  jobs still in squeue"
    fi
    stop_pid "$RUN/slurmd.pid"; stop_pid "$RUN/slurmctld.pid"; stop_pid "$RUN/munged.pid"
}
BACKGROUND=""           # the sweeps started in the background (stopped if still running)
trap stop_all EXIT

start_slurm() {
# --- the cluster --------------------------------------------------------------------------
say "start: munged, slurmctld, slurmd on loopback (configuration in $WORK)"
HOST=$(hostname -s)
mungekey -c -k "$WORK/munge.key" || exit 1
/usr/sbin/munged --force --socket="$RUN/munge.sock" --key-file="$WORK/munge.key" \
    --pid-file="$RUN/munged.pid" --log-file="$WORK/log/munged.log" \
    --seed-file="$WORK/munged.seed" || exit 1
cat > "$SLURM_CONF" <<EOF
# a single-node test cluster for scripts/test_cluster.sh; no accounting (slurmdbd)
ClusterName=mvfalite
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$RUN/munge.sock
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
MinJobAge=300
KillWait=5
InactiveLimit=0
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=6000 State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
/usr/sbin/slurmctld || exit 1
wait_for 30 scontrol ping \
    || { echo "slurmctld did not answer"; tail "$WORK/log/slurmctld.log"; exit 1; }
/usr/sbin/slurmd || exit 1
wait_for 30 bash -c "sinfo -h -o %T | grep -qx idle" \
    || { echo "the node is not idle"; sinfo; tail "$WORK/log/slurmd.log"; exit 1; }
sinfo

}

# --- notebooks and grids ------------------------------------------------------------------
"$PY" - "$WORK" <<'EOF'
import sys
import nbformat
work = sys.argv[1]
def notebook(name, parameters, body):
    cell = nbformat.v4.new_code_cell(parameters)
    cell.metadata["tags"] = ["parameters"]
    book = nbformat.v4.new_notebook(cells=[cell, nbformat.v4.new_code_cell(body)])
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                   "language": "python"}
    nbformat.write(book, f"{work}/{name}.ipynb")
notebook("sleep", "x = 0\nseconds = 0\nout_dir = '.'",
         "import pathlib, time\ntime.sleep(seconds)\n"
         "pathlib.Path(out_dir, 'result.json').write_text('{\"x\": %d}' % x)")
notebook("train", "seed = 0\nepochs = 1\nout_dir = '.'",
         "from mvfa_lite import preset, run_few_shot\nfrom mvfa_lite.data import catalogue\n"
         "from mvfa_lite.outputs import save_result\n"
         "config = preset('fast-cpu', epochs=epochs, shots=2, seed=seed, device='cpu')\n"
         "run = run_few_shot(config, catalogue.path('chestxray_kermany224'),\n"
         "                   support_split='embedded', test_split='embedded', out=out_dir,\n"
         "                   progress=False)\n"
         "save_result(out_dir, {'metrics': run.metrics, 'history': run.train.history,\n"
         "                      'best_epoch': run.train.best_epoch})")
EOF
grid() { # grid NAME NOTEBOOK OUTPUT GRID [RESOURCES]
    printf 'notebook: %s\noutput: %s\ngrid: %s\nresources: {cpus: 1, mem_gb: 1%s}\n' \
        "$WORK/$2.ipynb" "$WORK/out/$3" "$4" "${5:+, $5}" > "$WORK/$1.yaml"
}
grid train train slurm-train "{seed: [0, 1]}" "timeout_min: 20"
grid plain sleep plain "{x: [1, 2]}"
grid cancel sleep cancel "{x: [1, 2], seconds: [30]}"
grid adopt sleep adopt "{x: [1, 2], seconds: [30]}"
grid requeue train requeue "{epochs: [12]}" "timeout_min: 3"
grid whole train whole "{epochs: [12]}"
grid ray train ray-train "{seed: [0, 1]}"
jobs() { squeue -h -r --me | wc -l; }
job_of() { "$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['job_id'])" "$1"; }
said_once() { [ "$(wc -l < "$1")" = 1 ] && grep -q "$2" "$1"; }   # FILE PATTERN: one line
rc_is() { [ "$1" = "$2" ]; }

slurm_checks() {
# --- SLURM --------------------------------------------------------------------------------
say "slurm: a grid without a time limit stops in one line, nothing submitted"
sweep "$WORK/plain.yaml" --executor slurm 2> "$WORK/e1"; rc=$?; cat "$WORK/e1"
check "no time limit: exit 2" rc_is "$rc" 2
check "no time limit: one line naming --timeout-min" said_once "$WORK/e1" \
    "needs a time limit per cell.*--timeout-min"
check "no time limit: nothing submitted" rc_is "$(jobs)" 0

say "slurm: a bad partition stops in one line listing sinfo's, nothing submitted"
sweep "$WORK/plain.yaml" --executor slurm --timeout-min 5 --partition gpu 2> "$WORK/e2"; rc=$?
cat "$WORK/e2"
check "bad partition: exit 2" rc_is "$rc" 2
check "bad partition: one line, sinfo's partitions" said_once "$WORK/e2" \
    "not a partition of this cluster; sinfo lists cpu"
check "bad partition: nothing submitted" rc_is "$(jobs)" 0

say "slurm: a 2-cell training sweep, then its resume"
sweep "$WORK/train.yaml" --executor slurm | tee "$WORK/o3"; rc=${PIPESTATUS[0]}
check "training sweep: exit 0" rc_is "$rc" 0
check "training sweep: time limit printed before submitting" grep -q "time limit 20 min" "$WORK/o3"
check "training sweep: both results" test -f "$WORK/out/slurm-train/seed-0/result.json" \
    -a -f "$WORK/out/slurm-train/seed-1/result.json"
check "training sweep: job ids recorded" test -f "$WORK/out/slurm-train/seed-1/job.json"
sweep "$WORK/train.yaml" --executor slurm | tee "$WORK/o4"; rc=${PIPESTATUS[0]}
check "resume: nothing run again" grep -q "0 run, 2 already finished, 0 failed" "$WORK/o4"

say "slurm: a cancelled cell is named cancelled; the next run does only it"
"$PY" -m mvfa_lite sweep "$WORK/cancel.yaml" --executor slurm --timeout-min 5 > "$WORK/o5" 2>&1 &
sweep_pid=$!            # the sweep's own process (not a subshell), to kill it below
BACKGROUND="$BACKGROUND $sweep_pid"
wait_for 60 test -f "$WORK/out/cancel/x-1_seconds-30/job.json"
cancelled=$(job_of "$WORK/out/cancel/x-1_seconds-30/job.json")
wait_for 120 bash -c "squeue -h -r --me -t RUNNING -o %i | grep -qx $cancelled"
scancel "$cancelled"
wait "$sweep_pid"; rc=$?; cat "$WORK/o5"
check "cancelled: exit 1" rc_is "$rc" 1
check "cancelled: named as such" grep -q "x-1_seconds-30: failed: SLURM: cancelled (CANCELLED)" \
    "$WORK/o5"
check "cancelled: progress line" grep -q "jobs: .* 1 done, 1 failed (x-1_seconds-30) of 2" \
    "$WORK/o5"
sweep "$WORK/cancel.yaml" --executor slurm --timeout-min 5 | tee "$WORK/o6"
check "cancelled: the next run does only it" grep -q "1 run, 1 already finished, 0 failed" \
    "$WORK/o6"

say "slurm: the jobs of a killed sweep are adopted, not submitted again"
"$PY" -m mvfa_lite sweep "$WORK/adopt.yaml" --executor slurm --timeout-min 5 > "$WORK/o7" 2>&1 &
sweep_pid=$!            # the sweep's own process (not a subshell), to kill it below
BACKGROUND="$BACKGROUND $sweep_pid"
wait_for 60 test -f "$WORK/out/adopt/x-2_seconds-30/job.json"
kill -KILL "$sweep_pid"; wait "$sweep_pid" 2>/dev/null
before=$(jobs)
sweep "$WORK/adopt.yaml" --executor slurm --timeout-min 5 | tee "$WORK/o8"; rc=${PIPESTATUS[0]}
check "adopted: exit 0" rc_is "$rc" 0
check "adopted: both cells adopted" grep -q "adopted 2 cells" "$WORK/o8"
check "adopted: nothing submitted again" bash -c "! grep -q submitted '$WORK/o8'"
check "adopted: two jobs, not four" rc_is "$before" 2
sweep "$WORK/adopt.yaml" --status | tee "$WORK/o9"
check "status: both finished" grep -q "2 finished, 0 pending, 0 running, 0 failed, 0 to do" \
    "$WORK/o9"

say "slurm: a cell signalled as at its time limit is requeued and resumes"
# SLURM sends USR2 90 s before the limit (submitit's --signal=USR2@90). How long 12 epochs take
# depends on the machine, so the signal is sent here, once the first epoch's state is on disk.
"$PY" -m mvfa_lite sweep "$WORK/requeue.yaml" --executor slurm > "$WORK/o10" 2>&1 &
sweep_pid=$!
BACKGROUND="$BACKGROUND $sweep_pid"
wait_for 120 test -f "$WORK/out/requeue/epochs-12/.training-state.pt"
scancel --signal=USR2 "$(job_of "$WORK/out/requeue/epochs-12/job.json")"
wait "$sweep_pid"; rc=$?; cat "$WORK/o10"
check "requeue: exit 0" rc_is "$rc" 0
check "requeue: requeued by submitit at the signal" grep -rq "Requeued job" \
    "$WORK/out/requeue/.slurm"
check "requeue: resumed from its last epoch" grep -q "resuming after epoch" \
    "$WORK/out/requeue/epochs-12/notebook.ipynb"
sweep "$WORK/whole.yaml" > "$WORK/o11"
check "requeue: the uninterrupted result" cmp "$WORK/out/requeue/epochs-12/result.json" \
    "$WORK/out/whole/epochs-12/result.json"

}

ray_checks() {
# --- Ray ----------------------------------------------------------------------------------
say "ray: a local head on loopback, with token authentication (Ray's default where a token is)"
"$PY" -c "import uuid; print(uuid.uuid4().hex)" > "$WORK/ray-token"
export RAY_AUTH_TOKEN_PATH=$WORK/ray-token      # the head turns tokens on; clients need the mode
setsid "$(dirname "$PY")/ray" start --head --block --node-ip-address=127.0.0.1 --port=26379 \
    --ray-client-server-port=10001 --num-cpus=2 --include-dashboard=false \
    --disable-usage-stats --temp-dir="$WORK/ray/ray" > "$WORK/log/ray.log" 2>&1 &
echo $! > "$RUN/ray.pid"
wait_for 90 grep -q "Ray runtime started" "$WORK/log/ray.log" \
    || { tail "$WORK/log/ray.log"; exit 1; }
wait_for 60 bash -c "exec 3<>/dev/tcp/127.0.0.1/10001" \
    || { echo "Ray Client's port does not answer"; exit 1; }      # it starts after the rest
sweep "$WORK/ray.yaml" --executor ray --ray-address ray://127.0.0.1:10001 | tee "$WORK/o12"
rc=${PIPESTATUS[0]}
check "ray://: exit 0" rc_is "$rc" 0
check "ray://: both results" test -f "$WORK/out/ray-train/seed-0/result.json" \
    -a -f "$WORK/out/ray-train/seed-1/result.json"
sweep "$WORK/ray.yaml" --executor ray --ray-address 127.0.0.1:26379 | tee "$WORK/o13"
check "ray resume through the GCS address" grep -q "0 run, 2 already finished" "$WORK/o13"
stop_pid "$RUN/ray.pid" group
sweep "$WORK/plain.yaml" --executor ray --ray-address ray://127.0.0.1:10001 2> "$WORK/e14"
rc=$?; cat "$WORK/e14"
check "ray:// without a head: exit 2" rc_is "$rc" 2
check "ray:// without a head: one line" said_once "$WORK/e14" "does not answer"
sweep "$WORK/plain.yaml" --executor ray --ray-address 127.0.0.1:26379 2> "$WORK/e15"; rc=$?
cat "$WORK/e15"
check "GCS address without a head: exit 2" rc_is "$rc" 2
check "GCS address without a head: one line" said_once "$WORK/e15" "does not answer"
# the killed head's address stays in Ray's folder, where auto finds it (Ray retries it)
sweep "$WORK/plain.yaml" --executor ray --ray-address auto 2> "$WORK/e16"; rc=$?
cat "$WORK/e16"
check "auto, the head gone: exit 2" rc_is "$rc" 2
check "auto, the head gone: one line" said_once "$WORK/e16" "the Ray cluster recorded in"
rm "$WORK/ray/ray/ray_current_cluster"
sweep "$WORK/plain.yaml" --executor ray --ray-address auto 2> "$WORK/e17"; rc=$?
cat "$WORK/e17"
check "auto without a cluster: exit 2" rc_is "$rc" 2
check "auto without a cluster: one line" said_once "$WORK/e17" "cannot start or reach Ray at auto"

}

# Ray first: run after the SLURM part, Ray Client's per-client server sometimes died at spawn
# (2 of 3 full runs on 2-core machines, empty log; the Ray part alone: every run passed).
# The cause is not found yet (issue 23); the order keeps both parts tested meanwhile.
PARTS=${PARTS:-ray slurm}      # PARTS=ray: the Ray checks alone
for part in $PARTS; do
    case $part in
        slurm) start_slurm && slurm_checks ;;
        ray) ray_checks ;;
        *) echo "unknown part $part (slurm, ray)"; exit 2 ;;
    esac
done

say "summary: $PASSES passed, $FAILS failed (work folder $WORK)"
[ "$FAILS" = 0 ]
