"""AVDiT-mini: a small, faithful AVDiT trained with a Mixture of Noise Levels (MoNL).

The package grows with the book: each module names the chapter that teaches it.
"""

__version__ = "0.1.0"
