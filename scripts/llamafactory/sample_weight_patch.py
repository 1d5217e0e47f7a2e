"""Per-pair DPO weights for LLaMA-Factory (HS-DPO): a `sample_weight` column reaches the loss.

Written against llamafactory 0.9.5 (PyPI), with trl 0.24.0 and transformers 5.6.0.

LLaMA-Factory drops every column it does not know, in three places, and its DPO loss has no
per-pair weight. Importing this module (before training starts) patches the minimal set:

  1. data/converter.py, DATASET_CONVERTERS["alpaca"] (AlpacaDatasetConverter.__call__):
     `align_dataset` maps each record to `_prompt/_response/_system/_tools/_images/_videos/
     _audios` and removes all source columns, so `sample_weight` would vanish here. We register
     a subclass that also emits `_sample_weight` (ranking datasets only; 1.0 when the dataset has
     no such column). A subclass, not an in-place edit, so `datasets`' cache fingerprint of the
     map differs from an unpatched run's.
  2. data/processor/pairwise.py, PairwiseDatasetProcessor.preprocess_dataset: builds only
     chosen_/rejected_ input_ids/attention_mask/labels + images/videos/audios, skips invalid
     examples, and `_get_preprocessed_dataset` removes the input columns. We run it one example
     at a time and keep `sample_weight` for the examples it kept.
  3. data/collator.py, PairwiseDataCollatorWithPadding.__call__: copies only the known keys
     into its 2n (chosen then rejected) features. We add `sample_weight` as a float32 tensor of
     shape (n,). (training_args.remove_unused_columns is forced to False by LLaMA-Factory's
     hparams/parser.py, so the Trainer keeps the column up to the collator.)
  4. train/dpo/trainer.py, CustomDPOTrainer.get_batch_loss_metrics: passes the batch to
     `model(**batch)` (through concatenated_forward), so the weight must be popped first; and
     CustomDPOTrainer.compute_preference_loss returns the per-pair preference loss before
     get_batch_loss_metrics adds `pref_ftx * sft_loss`, so multiplying there weights the DPO
     term only:  loss = mean_i( w_i * dpo_i + pref_ftx * sft_i ).

For stage `dpo` (and `sft`, which is untouched). Not for stage `rm` (its trainer would get the
extra `sample_weight` key) nor `streaming: true` (accelerate's batch dispatch slices every
tensor by the first one's batch size, and the weights have n rows where input_ids have 2n).
Import llamafactory before trl (this module does): llamafactory patches transformers'
`_is_package_available`, without which trl 0.24 fails to import under transformers 5.
"""

from __future__ import annotations

import math
from typing import Any

import llamafactory  # first: see the note above about trl

WRITTEN_FOR = "0.9.5"
COLUMN = "sample_weight"  # the column in the pairwise dataset and the key in the batch
_ALIGNED = "_sample_weight"  # the column after align_dataset, beside _prompt, _response, ...


class SampleWeightPatchError(RuntimeError):
    pass


def _need(owner: Any, name: str, where: str) -> Any:
    value = getattr(owner, name, None)
    if value is None:
        raise SampleWeightPatchError(
            f"sample_weight_patch: {where}.{name} not found in llamafactory "
            f"{getattr(llamafactory, '__version__', '?')}; this patch was written against "
            f"{WRITTEN_FOR} and must be ported to this version."
        )
    return value


def _need_own(cls: type, name: str) -> Any:
    # The method must be defined by this class itself (not inherited), as in 0.9.5.
    if name not in vars(cls):
        raise SampleWeightPatchError(
            f"sample_weight_patch: {cls.__module__}.{cls.__name__}.{name} not found in llamafactory "
            f"{getattr(llamafactory, '__version__', '?')}; this patch was written against "
            f"{WRITTEN_FOR} and must be ported to this version."
        )
    return vars(cls)[name]


def _weight_of(example: Any) -> float:
    if COLUMN not in example:  # no weight column in this dataset: plain DPO
        return 1.0
    value = example[COLUMN]
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{COLUMN}={value!r} is not a number (a pair without a weight?)") from None
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"{COLUMN}={value!r} is not a finite non-negative number")
    return weight


_APPLIED = False
ORIGINALS: dict[str, Any] = {}  # the unpatched functions, for tests (check_export.py)


def apply() -> None:
    """Installs the patches (idempotent). Called on import."""
    global _APPLIED
    if _APPLIED:
        return
    if getattr(llamafactory, "__version__", None) != WRITTEN_FOR:
        print(
            f"[sample_weight_patch] warning: written for llamafactory {WRITTEN_FOR}, found "
            f"{getattr(llamafactory, '__version__', '?')}; the functions it patches were found, "
            "but check that they still behave as described in this module's docstring."
        )

    import torch
    from llamafactory.data import collator as lf_collator
    from llamafactory.data import converter as lf_converter
    from llamafactory.data.processor import pairwise as lf_pairwise
    from llamafactory.train.dpo import trainer as lf_dpo

    converters = _need(lf_converter, "DATASET_CONVERTERS", "llamafactory.data.converter")
    alpaca = _need(lf_converter, "AlpacaDatasetConverter", "llamafactory.data.converter")
    if converters.get("alpaca") is not alpaca:
        raise SampleWeightPatchError("sample_weight_patch: DATASET_CONVERTERS['alpaca'] is not AlpacaDatasetConverter")
    processor_cls = _need(lf_pairwise, "PairwiseDatasetProcessor", "llamafactory.data.processor.pairwise")
    collator_cls = _need(lf_collator, "PairwiseDataCollatorWithPadding", "llamafactory.data.collator")
    trainer_cls = _need(lf_dpo, "CustomDPOTrainer", "llamafactory.train.dpo.trainer")
    orig_preprocess = _need_own(processor_cls, "preprocess_dataset")
    orig_collate = _need_own(collator_cls, "__call__")
    orig_metrics = _need_own(trainer_cls, "get_batch_loss_metrics")
    orig_pref_loss = _need_own(trainer_cls, "compute_preference_loss")

    ORIGINALS.update(
        alpaca_converter=alpaca,
        preprocess_dataset=orig_preprocess,
        collate=orig_collate,
        get_batch_loss_metrics=orig_metrics,
        compute_preference_loss=orig_pref_loss,
    )

    # 1. converter: keep the weight through align_dataset (which removes all source columns).
    global SampleWeightedAlpacaDatasetConverter

    class SampleWeightedAlpacaDatasetConverter(alpaca):
        def __call__(self, example: dict[str, Any]) -> dict[str, Any]:
            output = super().__call__(example)
            if self.dataset_attr.ranking:
                output[_ALIGNED] = _weight_of(example)
            return output

    # Module-level name, so that pickling (datasets' fingerprint, num_proc workers) finds it.
    SampleWeightedAlpacaDatasetConverter.__module__ = __name__
    SampleWeightedAlpacaDatasetConverter.__qualname__ = "SampleWeightedAlpacaDatasetConverter"
    converters["alpaca"] = SampleWeightedAlpacaDatasetConverter

    # 2. pairwise preprocessing: carry the weight of each example that survives.
    def preprocess_dataset(self, examples: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if _ALIGNED not in examples:
            return orig_preprocess(self, examples)
        merged: dict[str, list[Any]] = {}
        weights: list[float] = []
        for i in range(len(examples["_prompt"])):
            one = orig_preprocess(self, {key: column[i : i + 1] for key, column in examples.items()})
            kept = len(one.get("chosen_input_ids", []))
            if kept not in (0, 1):
                raise SampleWeightPatchError(f"preprocess_dataset made {kept} rows from one example")
            for key, column in one.items():
                merged.setdefault(key, []).extend(column)
            weights.extend([examples[_ALIGNED][i]] * kept)
        if merged:
            merged[COLUMN] = weights
        return merged

    processor_cls.preprocess_dataset = preprocess_dataset

    # 3. collator: put the weights in the batch, one per pair (chosen rows 0..n-1).
    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        weights = [float(f[COLUMN]) for f in features] if features and COLUMN in features[0] else None
        batch = orig_collate(self, features)
        if weights is not None:
            batch[COLUMN] = torch.tensor(weights, dtype=torch.float32)
        return batch

    collator_cls.__call__ = collate

    # 4. trainer: take the weight out of the model's inputs, and weight the preference term.
    def get_batch_loss_metrics(self, model, batch, train_eval="train"):
        weights = None
        if COLUMN in batch:
            batch = dict(batch)
            weights = batch.pop(COLUMN)
        self._sample_weight = weights
        try:
            return orig_metrics(self, model, batch, train_eval)
        finally:
            self._sample_weight = None

    def compute_preference_loss(self, *args, **kwargs):
        losses, chosen_rewards, rejected_rewards = orig_pref_loss(self, *args, **kwargs)
        weights = getattr(self, "_sample_weight", None)
        if weights is not None:
            if weights.shape != losses.shape:
                raise SampleWeightPatchError(
                    f"{COLUMN} has shape {tuple(weights.shape)}, the per-pair losses {tuple(losses.shape)}"
                )
            losses = losses * weights.to(device=losses.device, dtype=losses.dtype)
            if not getattr(compute_preference_loss, "announced", False):  # once per process
                compute_preference_loss.announced = True
                print(f"[sample_weight_patch] weighting the DPO term per pair; first weights {weights.tolist()}")
        return losses, chosen_rewards, rejected_rewards

    trainer_cls.get_batch_loss_metrics = get_batch_loss_metrics
    trainer_cls.compute_preference_loss = compute_preference_loss
    _APPLIED = True


apply()
