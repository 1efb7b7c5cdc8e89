"""Tasks: the paper's datasets, word-pair tasks, custom tasks and the embedded model's tasks.

>>> import tvlens as tv
>>> tv.tasks.get("toy/antonym").kind
'generation'
"""

from tvlens.tasks._registry import describe as describe
from tvlens.tasks._registry import get as get
from tvlens.tasks._registry import names as names
from tvlens.tasks._registry import register as register
from tvlens.tasks._registry import resolve as resolve
from tvlens.tasks._task import Example as Example
from tvlens.tasks._task import Task as Task
from tvlens.tasks._task import TaskKind as TaskKind
from tvlens.tasks._toy import toy_task_names as toy_task_names
from tvlens.tasks._toy import with_instruction as with_instruction
from tvlens.tasks._toy import _register_all as _register_toy
from tvlens.tasks._custom import from_dataset as from_dataset
from tvlens.tasks._custom import from_file as from_file
from tvlens.tasks._hf import load_hf_task as load_hf_task
from tvlens.tasks._hf import _register_all as _register_hf
from tvlens.tasks._wordpairs import load_function_vectors_json as load_function_vectors_json
from tvlens.tasks._wordpairs import _register_all as _register_wordpairs
from tvlens.tasks._fv import _register_all as _register_fv
from tvlens.tasks._composed import _register_all as _register_composed
from tvlens.tasks._myopic import _register_all as _register_myopic
from tvlens.tasks._wordclass import _register_all as _register_wordclass

_register_toy()
_register_hf()
_register_wordpairs()
_register_fv()
_register_composed()
_register_myopic()
_register_wordclass()
from_pairs = Task.from_pairs
