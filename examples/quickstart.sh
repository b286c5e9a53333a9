#!/usr/bin/env bash
# Quickstart: from a folder of images to predictions, a score and a neighbour sheet.
#
#   bash examples/quickstart.sh [WORK_DIR]      (default WORK_DIR: quickstart)
#
# Runs offline in about a minute on 2 CPU cores: the images are scikit-learn's handwritten
# digits written as PNG files into class folders (images/<digit>/<n>.png), and ResNet50 uses
# random weights (--weights none) at 32x32 pixels. With internet access, drop
# `--weights none --image-size 32` to use the ImageNet weights on your own images.
# PER_CLASS (images per digit) can be set in the environment for a quicker run, and EPOCHS to cap
# the epochs (by default the fit stops by itself once it stops improving).
set -euo pipefail

EXAMPLES=$(cd "$(dirname "$0")" && pwd)
WORK=${1:-quickstart}
PER_CLASS=${PER_CLASS:-30}
EPOCHS=${EPOCHS:-}
mkdir -p "$WORK"
cd "$WORK"

# 1. A folder of images, one sub-folder per class.
python "$EXAMPLES/make_digit_images.py" images --per-class "$PER_CLASS" --size 32

# 2. Pass every image once through ResNet50; the features go to cache/features.h5.
tripletsk extract-features images --weights none --image-size 32

# 3. Training and test triplets ("anchor positive negative" per line) from the folders;
#    30% of each class's images are held out, so no test image is seen in training.
tripletsk make-triplets cache/features.h5 -n 2000 -o train.txt --split test.txt --test-size 0.3

# 4. Learn the similarity (the model remembers the cache it was fitted on).
tripletsk fit --triplets train.txt -o model.npz ${EPOCHS:+--set max_epochs="$EPOCHS"} \
    --set random_state=0 --plot loss.png

# 5. For each test triplet <A, B, C>: 1 if A is more similar to B than to C, else 0.
tripletsk predict --model model.npz --triplets test.txt -o predictions.txt
head -n 3 predictions.txt

# 6. How often is that right, and how well are images of a class retrieved?
tripletsk score --model model.npz --triplets test.txt --labels-from-folders \
    --plot distances.png

# 7. The images most similar to a cached image, and a picture of the result.
tripletsk search --model model.npz 3/0.png -k 5 --sheet neighbours.png
