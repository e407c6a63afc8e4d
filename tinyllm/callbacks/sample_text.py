"""Periodic text samples, so the progress of the model can be read, not only plotted."""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from tinyllm.generation import SamplingSettings, generate_text

log = logging.getLogger(__name__)


def datamodule_tokenizer(trainer: L.Trainer):
    tokenizer = getattr(trainer.datamodule, "tokenizer", None)
    if tokenizer is None:
        raise RuntimeError("this callback needs a datamodule with a fitted `tokenizer`")
    return tokenizer


class SampleTextCallback(L.Callback):
    """Every `every_n_steps` optimizer steps, continue `prompt` and log the text.

    The text goes to the Python log and to TensorBoard's Text tab (tag `samples`), so the
    progress of the model can be read, not only plotted.
    """

    def __init__(
        self,
        every_n_steps: int = 500,
        prompt: str = "\n",
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: int = 0,
        seed: int = 0,
    ):
        if every_n_steps < 1:
            raise ValueError(f"sample frequency must be >= 1 steps, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.prompt = prompt
        self.settings = SamplingSettings(
            max_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed
        )
        self._last_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_step or step % self.every_n_steps:
            return
        self._last_step = step
        if trainer.is_global_zero:
            self.sample(trainer, pl_module)

    def sample(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str:
        tokenizer = datamodule_tokenizer(trainer)
        unknown = set(tokenizer.unknown_characters(self.prompt))
        prompt = "".join(c for c in self.prompt if c not in unknown) or tokenizer.decode([0])
        text = generate_text(pl_module.model, tokenizer, prompt, self.settings)
        step = trainer.global_step
        settings = self.settings
        log.info(
            "sample at step %d (temperature %s, top-k %s):\n%s%s",
            step,
            settings.temperature,
            settings.top_k or "off",
            prompt,
            text,
        )
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                # Markdown: indent to keep the line breaks of the sample as they are
                body = "\n".join("    " + line for line in (prompt + text).splitlines())
                header = (
                    f"step {step} · temperature {settings.temperature} · "
                    f"top-k {settings.top_k or 'off'} · {settings.max_tokens} characters"
                )
                logger.experiment.add_text("samples", f"{header}\n\n{body}", global_step=step)
        return text
