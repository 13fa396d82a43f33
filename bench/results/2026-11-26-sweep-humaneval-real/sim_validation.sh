set -e
R=bench/results/2026-11-26-sweep-humaneval-real
for pair in 0.05:6 0.15:8 0.3:17 0.5:20 0.8:37; do
  rate=${pair%%:*}; n=${pair##*:}
  for seed in 0 1 2 3 4 5 6 7; do
    .venv/bin/smartspec sim sweep --cost-model $R/cost_model_fitted.json --rates $rate --policies off,fixed:3,fixed:7,goodput --requests $n --acceptance profile:0.997253,0.990237,0.955291,0.998353,0.994746,0.993421,0.990632,0.992327 --prompt-len replay:$R/records.csv --output-len fixed:64 --max-batch 32 --max-k 8 --no-oracle --seed $seed --out ${VAL_OUT:-sim-validation}/$rate-$seed --quiet >/dev/null
  done
done
