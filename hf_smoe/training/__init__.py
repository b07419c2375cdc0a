"""Training: the reward model's router and experts (`smoe train`, on cached backbone features) and a backbone's top
layers (`smoe tune-backbone`, on cached hidden states), with one trainer family over `transformers.Trainer`.
`arguments` holds the commands' argument dataclasses, `trainer` the `SMoETrainer`, `optim` the one place that
groups parameters for the optimizer (shared with `hf_smoe.trl.SMoERewardTrainer`), `callbacks` the training-loop
callbacks, `job` the `smoe train` job (with `mixture_tuning` for `--tune_layers`: the top layers trained with the
head under its objective), `backbone_tuning` the `smoe tune-backbone` job, and `top_layers` what both tunings of top
layers share (splitting the backbone, cached-state batches, LoRA)."""

from .arguments import (BackboneTuningArguments, BackboneTuningTrainingArguments, DataArguments, ModelArguments,
                        SMoETrainingArguments)
from .backbone_tuning import (TopLayersRewardModel, TopLayersTrainer, initialize_head_by_probe, load_tunable_backbone,
                              tune_backbone, tune_on_splits)
from .callbacks import RoutingCollapseCallback
from .job import (cached_features, check_epochs, run_trainer, save_checkpoint, split_for_training, train_head,
                  train_preset, train_reward_model, train_top_layers, train_tuned_preset)
from .mixture_tuning import (MixtureStatesCollator, TopLayersMixture, cached_state_sets, prepare_top_layers,
                             state_pairs, tuned_pair_features)
from .optim import PartLearningRatesMixin, optimizer_groups, parameter_role
from .top_layers import add_lora_adapters, keyed_pairs, split_layers, state_batch
from .trainer import PairCollator, SIDES, SMoETrainer, distributed_objective, tokenize_pairs
