"""The embedded model: a small transformer trained by tvlens itself on synthetic ICL tasks.

``tv.load_model("toy")`` loads the shipped checkpoint; :func:`train_toy_model` retrains it
(``tvlens toy-train``). See ``docs/embedded-model.md`` for the recipe and measured figures.
"""

from tvlens.toy._train import SequenceSampler as SequenceSampler
from tvlens.toy._train import ToyTrainConfig as ToyTrainConfig
from tvlens.toy._train import ToyTrainResult as ToyTrainResult
from tvlens.toy._train import load_toy_checkpoint as load_toy_checkpoint
from tvlens.toy._train import save_toy_checkpoint as save_toy_checkpoint
from tvlens.toy._train import train_toy_model as train_toy_model
from tvlens.toy._world import task_token as task_token
from tvlens.toy._world import vocabulary as vocabulary
from tvlens.toy._world import world as world
