"""Hugging Face Space entry point: the reward of every step of a reasoning trace about an image.

Set the Space variable MPRM_MODEL to a trained PRM (a Hub id), and MPRM_MODEL2 to a second one to compare
side by side; without MPRM_MODEL the Space builds and serves the embedded tiny model, whose rewards are
those of an untrained network (the page says so).
"""

from mprm_hf.space import create_app, launch

demo = create_app()

if __name__ == "__main__":
    launch(demo)
