"""The Hub Space entry point of the metric: the standard `evaluate` widget."""

import evaluate
from evaluate.utils import launch_gradio_widget

module = evaluate.load("visualprocessbench.py")
launch_gradio_widget(module)
