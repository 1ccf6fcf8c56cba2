set -o pipefail
export PYTHONUNBUFFERED=1
T0=$SECONDS
python3 benchmarks/sweep_configs.py --md $OUT/sweep.md 2>&1 | grep -v "^|" ; echo "sweep $((SECONDS-T0)) s"
python3 benchmarks/bench_mixer.py --impls dense triton --json $OUT/mixer.json --md $OUT/mixer.md > $OUT/mixer.log 2>&1; echo "mixer $((SECONDS-T0)) s"
python3 benchmarks/bench_mixer.py --arch small --dtype bfloat16 --impls dense triton --md $OUT/mixer_bf16.md > $OUT/bf16.log 2>&1; echo "bf16 $((SECONDS-T0)) s"
python3 benchmarks/bench_mixer.py --arch small --stages 1 --centres 25 49 --impls dense+compile triton --md $OUT/mixer_compile.md > $OUT/compile.log 2>&1; echo "compile $((SECONDS-T0)) s"
cat $OUT/sweep.md $OUT/mixer*.md
