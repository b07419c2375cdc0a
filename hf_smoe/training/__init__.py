"""Training: the reward model's router and experts (`smoe train`, on cached backbone features) and a backbone's top
layers (`smoe tune-backbone`, on cached hidden states), with one trainer family over `transformers.Trainer`.
`arguments` holds the commands' argument dataclasses, `trainer` the `SMoETrainer`, `optim` the one place that
groups parameters for the optimizer (shared with `hf_smoe.trl.SMoERewardTrainer`), `callbacks` the training-loop
callbacks, `job` the `smoe train` job and `backbone_tuning` the `smoe tune-backbone` job."""

from .arguments import (BackboneTuningArguments, BackboneTuningTrainingArguments, DataArguments, ModelArguments,
                        SMoETrainingArguments)
from .backbone_tuning import (TopLayersRewardModel, TopLayersTrainer, add_lora_adapters, initialize_head_by_probe,
                              keyed_pairs, load_tunable_backbone, split_layers, tune_backbone, tune_on_splits)
from .callbacks import RoutingCollapseCallback
from .job import (cached_features, check_epochs, run_trainer, save_checkpoint, split_for_training, train_head,
                  train_preset, train_reward_model)
from .optim import PartLearningRatesMixin, optimizer_groups, parameter_role
from .trainer import PairCollator, SIDES, SMoETrainer, distributed_objective, tokenize_pairs
