"""The paper's experiments, reproduced on the preference data we have: one module per table or figure (Table 1,
Table 8, Fig. 2, personalization for Table 5 / Fig. 8 / Table 13, interpretability for Table 4 / Fig. 6, Table 14,
and the reward-tuned backbones they can run on), each writing its Markdown table and a results.json beside the exact
command; `smoe demo` is the same idea in a few minutes on generated data. The modules share the reproduction
datasets (`reproduction_datasets`), the experimental settings (`settings`) and the writing of results (`results`).
"""

from .backbone import TUNED_BACKBONE_DATASETS, reproduce_backbone
from .demo import run_demo
from .fig2 import reproduce_fig2
from .interpretation import reproduce_fig6, reproduce_table4
from .personalization import reproduce_personalization
from .reproduction_datasets import resolve_data_root
from .table1 import reproduce_table1
from .table8 import reproduce_table8
from .table14 import reproduce_table14

__all__ = ["TUNED_BACKBONE_DATASETS", "reproduce_backbone", "reproduce_fig2", "reproduce_fig6",
           "reproduce_personalization", "reproduce_table1", "reproduce_table14", "reproduce_table4", "reproduce_table8",
           "resolve_data_root", "run_demo"]
