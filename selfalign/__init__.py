"""selfalign: a trainer that lets a language model improve itself.

generate -> judge -> filter -> train -> evaluate -> export, one module per stage.
"""

__version__ = "0.1.0"
