"""The Hydra configs of `tinyllm-train` / `python train.py` (YAML files; this makes them a
package Hydra can find when the app runs from the installed package)."""
