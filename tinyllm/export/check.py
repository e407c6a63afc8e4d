"""The check against transformers: load the written folder and compare it with our model."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tinyllm.artifacts import LoadedModel
from tinyllm.export.architectures import ExportError
from tinyllm.export.tokenizer_files import tokenizer_characters
from tinyllm.model import Transformer
from tinyllm.tokenizer import CharacterTokenizer

TOLERANCE = 1e-4  # max |logit difference| allowed in fp32
GREEDY_CHARACTERS = 200


@dataclass
class CheckReport:
    """What `--check` measured; `passed` only if every comparison holds."""

    max_logit_diff: float
    logit_ids: int
    layer_diffs: list[tuple[str, float]] = field(default_factory=list)
    greedy_identical: int = 0
    greedy_total: int = 0
    greedy_note: str = ""
    tokenizer_characters: int = 0
    tokenizer_problem: str = ""
    text_source: str = ""

    @property
    def first_divergent_layer(self) -> tuple[str, float] | None:
        return next(((n, d) for n, d in self.layer_diffs if d > TOLERANCE), None)

    @property
    def logits_ok(self) -> bool:
        return self.max_logit_diff <= TOLERANCE

    @property
    def greedy_ok(self) -> bool:
        return self.greedy_identical == self.greedy_total

    @property
    def passed(self) -> bool:
        return self.logits_ok and self.greedy_ok and not self.tokenizer_problem

    def summary(self) -> str:
        lines = [
            f"logits: max |difference| {self.max_logit_diff:.2e} over {self.logit_ids:,} "
            f"positions ({'within' if self.logits_ok else 'ABOVE'} {TOLERANCE:g})",
        ]
        divergent = self.first_divergent_layer
        if divergent is not None:
            lines.append(
                f"hidden states first diverge at {divergent[0]} (max |difference| "
                f"{divergent[1]:.2e})"
            )
        lines.append(
            f"greedy continuation: {self.greedy_identical}/{self.greedy_total} characters "
            f"identical{self.greedy_note}"
        )
        lines.append(
            f"tokenizer: {self.tokenizer_problem}"
            if self.tokenizer_problem
            else f"tokenizer: round trip identical on {self.tokenizer_characters:,} characters"
        )
        lines.append(f"text: {self.text_source}")
        return "\n".join(lines)


@torch.no_grad()
def forward_with_hidden_states(
    model: Transformer, ids: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and our residual stream as transformers reports it: the input of each layer, then
    the last layer's output after the final norm (n_layer + 1 tensors). Hooks on the model's
    own modules record them during its real forward, so nothing of model.py is re-implemented."""
    states: list[torch.Tensor] = []
    hooks = [model.blocks[0].register_forward_pre_hook(lambda m, args: states.append(args[0]))]
    for block in model.blocks:
        hooks.append(block.register_forward_hook(lambda m, args, out: states.append(out)))
    hooks.append(model.ln_f.register_forward_hook(lambda m, args, out: states.append(out)))
    try:
        logits = model(ids)
    finally:
        for hook in hooks:
            hook.remove()
    return logits, states[:-2] + states[-1:]  # the last block's output only after ln_f


def first_difference(a: Sequence, b: Sequence) -> int | None:
    """Index of the first item where `a` and `b` differ (a length difference counts), or None."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _layer_name(index: int, n_layer: int) -> str:
    if index == 0:
        return "the embeddings (input of layer 1)"
    if index == n_layer:
        return f"the output of layer {index} (after the final norm)"
    return f"the output of layer {index}"


def _greedy_reference(hf, window_ids: list[int], steps: int, context: int) -> list[int]:
    """transformers' greedy continuation: `generate` when it fits the context, else the same
    sliding window tinyllm's `stream` uses (keep the last half, continue), recomputed each step."""
    if len(window_ids) + steps <= context:
        prompt = torch.tensor([window_ids])
        out = hf.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            temperature=None,
            top_k=None,
            top_p=None,
        )
        return out[0, len(window_ids) :].tolist()
    window, result = window_ids[-context:], []
    for _ in range(steps):
        token = int(hf(torch.tensor([window])).logits[0, -1].argmax())
        result.append(token)
        window = _slide(window, token, context)
    return result


def _slide(window: list[int], token: int, context: int) -> list[int]:
    """The next window of `Transformer.stream`: append, or when full keep the last half."""
    if len(window) < context:
        return window + [token]
    keep = max(1, context // 2)
    return window[-(keep - 1) :] + [token] if keep > 1 else [token]


def _margin(model: Transformer, prompt: list[int], generated: list[int], step: int, a: int, b: int):
    """How far apart our logits for tokens `a` and `b` are at greedy step `step`."""
    window = prompt[-model.config.context_length :]
    for token in generated[:step]:
        window = _slide(window, token, model.config.context_length)
    with torch.no_grad():
        logits = model(torch.tensor([window]))[0, -1]
    return float(logits[a] - logits[b])


def representative_text(tokenizer: CharacterTokenizer, length: int = 2048) -> str:
    """Every character of the vocabulary, then a fixed pseudo-random mix of them."""
    vocab = list(tokenizer_characters(tokenizer))
    rng = random.Random(0)
    return "".join(vocab) + "".join(rng.choice(vocab) for _ in range(length))


def validation_text(model_path: Path, tokenizer: CharacterTokenizer) -> tuple[str, str] | None:
    """The run's validation split, read and cleaned as the run did; None when not at hand."""
    try:
        from tinyllm.evaluation import eval_config, split_ids

        ids, _, datamodule = split_ids(eval_config(model_path=str(model_path)), tokenizer)
    except Exception:  # noqa: BLE001 - no run config or corpus at hand: use another text
        return None
    part = tokenizer.decode(ids.tolist())
    if not part:
        return None
    return part, f"the run's validation split ({datamodule.source})"


def check_export(
    loaded: LoadedModel,
    folder: Path,
    text: str | None = None,
    text_source: str = "given text",
    windows: int = 4,
) -> CheckReport:
    """Load `folder` with transformers and compare it with our model on the same ids.

    Logits (fp32) on up to `windows` context-length windows of `text`, layer by layer hidden
    states, a greedy continuation of GREEDY_CHARACTERS characters, and the tokenizer round trip
    on the whole text plus every vocabulary character.
    """
    from transformers.utils import logging as hf_logging

    # quiet while checking: the round-trip text is longer than model_max_length (a warning),
    # and the loading progress bar is noise in a one-line-per-result report
    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return _compare(loaded, folder, text, text_source, windows)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def _compare(
    loaded: LoadedModel, folder: Path, text: str | None, text_source: str, windows: int
) -> CheckReport:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = loaded.model.float().eval(), loaded.tokenizer
    config = model.config
    if text is None:
        text, text_source = representative_text(tokenizer), "every vocabulary character + a mix"
    hf = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    hf.eval()
    hf_tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)

    # tokenizer: the same ids, and decoding gives the text back
    problem = ""
    for sample in (text, tokenizer_characters(tokenizer)):
        ours = tokenizer.encode(sample)
        theirs = hf_tok(sample, add_special_tokens=False)["input_ids"]
        if theirs != ours:
            at = first_difference(ours, theirs)
            problem = f"ids differ at character {at} of {len(sample):,} ({sample[at : at + 10]!r})"
            break
        decoded = hf_tok.decode(theirs)
        if decoded != sample:
            at = first_difference(sample, decoded)
            problem = f"decoding differs at character {at} ({decoded[at : at + 10]!r})"
            break

    # logits and hidden states on the same ids
    ids = torch.tensor(tokenizer.encode(text[: windows * config.context_length]))
    rows = max(1, len(ids) // config.context_length)
    batch = ids[: rows * config.context_length].view(rows, -1) if len(ids) >= 2 else ids.view(1, -1)
    with torch.no_grad():
        ours_logits, ours_states = forward_with_hidden_states(model, batch)
        out = hf(batch, output_hidden_states=True)
    max_diff = float((out.logits - ours_logits).abs().max())
    layer_diffs = [
        (_layer_name(i, config.n_layer), float((theirs - ours).abs().max()))
        for i, (ours, theirs) in enumerate(zip(ours_states, out.hidden_states, strict=True))
    ]

    # greedy continuation from the start of the text
    prompt = tokenizer.encode(text[: max(1, min(32, config.context_length // 4))])
    ours_greedy = list(model.stream(prompt, GREEDY_CHARACTERS, temperature=0.0))
    with torch.no_grad():
        theirs_greedy = _greedy_reference(hf, prompt, GREEDY_CHARACTERS, config.context_length)
    differ = first_difference(ours_greedy, theirs_greedy)
    same = len(ours_greedy) if differ is None else differ
    note = ""
    if same < GREEDY_CHARACTERS:
        if same < len(theirs_greedy):
            a, b = ours_greedy[same], theirs_greedy[same]
            margin = _margin(model, prompt, ours_greedy, same, a, b)
            note = (
                f" (first difference at character {same + 1}: ours {tokenizer.decode([a])!r}, "
                f"transformers {tokenizer.decode([b])!r}; our logits for the two differ by "
                f"{margin:.2e}{', a near-tie' if margin <= 2 * TOLERANCE else ''})"
            )
        else:
            note = f" (transformers stopped after {len(theirs_greedy)})"
    return CheckReport(
        max_logit_diff=max_diff,
        logit_ids=batch.numel(),
        layer_diffs=layer_diffs,
        greedy_identical=same,
        greedy_total=GREEDY_CHARACTERS,
        greedy_note=note,
        tokenizer_characters=len(text) + len(tokenizer_characters(tokenizer)),
        tokenizer_problem=problem,
        text_source=text_source,
    )


# what export() runs on the written folder before publishing it
Checker = Callable[[LoadedModel, Path], CheckReport]


def checker(model_path: str | Path, text_file: Path | None = None) -> Checker:
    """The `--check` of the command: on `text_file`, else the run's validation split, else every
    vocabulary character."""
    model_path = Path(model_path).expanduser()

    def check(loaded: LoadedModel, folder: Path) -> CheckReport:
        if text_file is not None:
            text = _read_text(text_file, loaded.tokenizer, loaded.lowercase)
            source = f"{text_file}"
        else:
            found = validation_text(model_path, loaded.tokenizer)
            text, source = found if found is not None else (None, "")
        return check_export(loaded, folder, text, source)

    return check


def _read_text(path: Path, tokenizer: CharacterTokenizer, lowercase: bool = False) -> str:
    """The --text file, lowercased for a model of a lowercased corpus (as its corpus was)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"--text {path} cannot be read ({e}): pass a UTF-8 text file") from None
    if lowercase:
        text = text.lower()
    if not text:
        raise ExportError(f"--text {path} is empty: pass text the model can encode")
    unknown = tokenizer.unknown_characters(text)
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise ExportError(
            f"--text {path} has characters outside the model's vocabulary ({shown}{more}): "
            "pass text the model can encode"
        )
    return text
