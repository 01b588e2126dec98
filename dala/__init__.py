"""DALA Lab: DALAResNet50 and its peers on BreakHis, as a UI-free teaching package.

Sub-packages: ``dala.data`` (index, splits, synthetic default, datasets), ``dala.models``
(registry, checkpoints), ``dala.train`` (one loop for CLI, notebooks and app), ``dala.metrics``,
``dala.explain`` (Grad-CAM family, DT Grad-CAM, faithfulness), ``dala.hub`` (Hugging Face Hub).
Nothing here imports Streamlit.
"""

__version__ = "0.1.0"
