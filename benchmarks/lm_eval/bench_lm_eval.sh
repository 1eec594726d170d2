#!/usr/bin/env bash
# lm-evaluation-harness's CLI on bench_generation.py's fixed task (64 prompts, 48 new tokens,
# greedy, diag's chat format), one CLI call per adapter, as a harness-driven sweep runs:
#
#     LM_EVAL=/path/to/venv/bin/lm-eval benchmarks/lm_eval/bench_lm_eval.sh ADAPTER [ADAPTER ...]
#
# Compare with `.venv/bin/python benchmarks/bench_generation.py ADAPTER ... --naive` on the same
# machine (its per-checkpoint wall and the one-process-per-adapter loop). lm-eval is not a diag
# dependency; a scratch venv that reuses diag's CPU torch, transformers and peft (so pip never
# pulls a CUDA torch), measured with lm_eval 0.4.13:
#
#     python3 -m venv /tmp/lmeval && echo "$PWD/.venv/lib/python3.11/site-packages" \
#         > /tmp/lmeval/lib/python3.11/site-packages/diag_venv.pth
#     /tmp/lmeval/bin/pip install --no-deps lm-eval==0.4.13
#     /tmp/lmeval/bin/pip install datasets evaluate scikit-learn rouge-score nltk pytablewriter \
#         sqlitedict word2number dill more_itertools   # check with --dry-run that torch stays
#
# Everything runs offline on the embedded SmolLM2 (its converted copy in diag's cache). Prints
# one line per adapter: the CLI's wall seconds (Python start, model load, generation).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
LM_EVAL=${LM_EVAL:?set LM_EVAL to an lm-eval executable}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_EVALUATE_OFFLINE=1
export HF_DATASETS_CACHE=$WORK/datasets TOKENIZERS_PARALLELISM=false

MODEL=$("$ROOT/.venv/bin/python" - "$WORK/prompts.jsonl" <<'PY'
import json, sys
from diag.backend.loading import ensure_local_weights
from diag.models import resolve_base
sys.path.insert(0, "benchmarks")
from bench_generation import task_prompts
with open(sys.argv[1], "w") as fh:
    fh.writelines(json.dumps({"prompt": p}) + "\n" for p in task_prompts())
print(ensure_local_weights(resolve_base(None)))
PY
)
mkdir -p "$WORK/tasks"
sed "s|PROMPTS_JSONL|$WORK/prompts.jsonl|" "$HERE/diag_general_en.yaml" > "$WORK/tasks/diag_general_en.yaml"
for adapter in "$@"; do
  start=$(date +%s.%N)
  "$LM_EVAL" run --model hf --model_args "pretrained=$MODEL,dtype=float32,peft=$adapter" \
    --tasks diag_general_en --include_path "$WORK/tasks" \
    --apply_chat_template --system_instruction "You are a helpful assistant." \
    --batch_size 64 --device cpu --log_samples --output_path "$WORK/out" > "$WORK/log" 2>&1 \
    || { tail -20 "$WORK/log"; exit 1; }
  end=$(date +%s.%N)
  printf '{"adapter": "%s", "lm_eval_cli_wall_s": %.1f}\n' "$adapter" "$(echo "$end - $start" | bc -l)"
done
