#!/usr/bin/env bash
# Sharded discovery on N GPUs, then clustering once every shard succeeded:
#   N=8 DATA=/data/coco OUT=/scratch/$USER/coco CACHE=/scratch/$USER/datus-cache \
#       bash slurm/submit_sharded.sh dataset=cocostuff27 backbone=dino_vits8 k=27
# Prints the two job ids. Results: $OUT/labels (pseudo masks, summary.json, metrics.json).
set -euo pipefail
: "${N:?set N, the number of shards (GPUs)}"
here="$(cd "$(dirname "$0")" && pwd)"
export N
array=$(sbatch --parsable --array=0-$((N - 1)) --export=ALL "$here/discover_array.sbatch" "$@")
labels=$(sbatch --parsable --dependency=afterok:"${array%%;*}" --export=ALL "$here/cluster.sbatch" "$@")
echo "discovery array: $array  clustering: $labels"
