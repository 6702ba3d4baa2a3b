"""Hugging Face Space entry point: the reward of every step of a reasoning trace about an image.

Set the Space variable MPRM_MODEL to a trained PRM (a Hub id); without it the Space builds and serves
the embedded tiny model, whose rewards are those of an untrained network.
"""

from mprm_hf.demo import create_app

demo = create_app()

if __name__ == "__main__":
    demo.launch()
