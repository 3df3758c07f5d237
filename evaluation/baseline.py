"""The learning-free floor: cosine 1-nearest-neighbour on raw coordinates (docs/DATA.md section 3).

Each sequence is resampled as a whole to ``clip_len`` frames (32 by default), centred on the
layout's centre joint of body 1 in the first frame (the evaluation feeder's normalisation;
``--normalize view`` also turns it to face the camera, as pretraining with that flag does),
flattened, and classified by its most cosine-similar training sequence. Any learned
representation must clear this number.

    python -m evaluation.baseline DIR --train xview_train --test xview_val [--clip-len 32]
        [--normalize first_frame|view|none]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from evaluation.knn import knn_evaluate
from feeders.dataset import NORMALIZATIONS, EvalDataset
from feeders.store import Store, open_store


def raw_clips(store, split: str, clip_len: int, normalize: str = "first_frame"
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened normalised clips `(N, C*L*V*M)` and labels `(N,)` of one split."""
    dataset = EvalDataset(store, split, clip_len, normalize=normalize)
    clips, labels = zip(*[(clip.reshape(-1), label) for clip, label, _ in dataset])
    return torch.stack(clips), torch.as_tensor(labels)


def raw_nn_accuracy(store, train_split: str, test_split: str, clip_len: int = 32,
                    normalize: str = "first_frame") -> float:
    """Top-1 (%) of cosine 1-NN from the test split's raw clips to the training split's.
    store: a Store or its directory. A non-finite clip raises NonFiniteError naming it."""
    store = store if isinstance(store, Store) else open_store(store)
    gallery, gallery_labels = raw_clips(store, train_split, clip_len, normalize)
    queries, query_labels = raw_clips(store, test_split, clip_len, normalize)
    names = np.asarray(store.names)
    return knn_evaluate(queries, query_labels, gallery, gallery_labels, k=1,
                        query_names=names[store.split_indices(test_split)],
                        gallery_names=names[store.split_indices(train_split)])["top1"]


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.baseline",
        description="Learning-free floor: cosine 1-NN on raw, centred, resampled coordinates.")
    parser.add_argument("data", help="dataset directory (python -m feeders.prepare ...)")
    parser.add_argument("--train", default="xsub_train", help="gallery split (default xsub_train)")
    parser.add_argument("--test", default="xsub_val", help="query split (default xsub_val)")
    parser.add_argument("--clip-len", type=int, default=32, help="frames per clip (default 32)")
    parser.add_argument("--normalize", choices=NORMALIZATIONS, default="first_frame",
                        help="coordinate normalisation (default first_frame; see feeders.dataset)")
    parser.add_argument("--value", action="store_true", help="print only the top-1 number")
    args = parser.parse_args(argv)
    if args.train == args.test:
        parser.error(f"--test {args.test!r} is the gallery split (--train): pass the test split")
    try:
        store = open_store(args.data)
        for flag, split in (("--train", args.train), ("--test", args.test)):
            if split not in store.splits:
                raise ValueError(f"{flag} {split!r}: dataset {args.data} has no such split; "
                                 f"available splits: {', '.join(sorted(store.splits))}")
        top1 = raw_nn_accuracy(store, args.train, args.test, args.clip_len, args.normalize)
    except ValueError as err:  # StoreError, NonFiniteError (a NaN sequence)
        parser.error(str(err))
    if args.value:
        print(f"{top1:.2f}")
    else:
        print(f"raw 1-NN top-1: {top1:.2f} %  ({args.data}, {args.train} -> {args.test}, "
              f"{args.clip_len} frames, normalize {args.normalize})")
    return top1


if __name__ == "__main__":
    main()
