"""Loading a model folder: the tokenizer and our ``BertForQuestionAnswering`` in float32, with any
failure to read the folder as one line naming it, and transformers kept quiet while it loads."""
from __future__ import annotations

import contextlib
import logging

import torch

import utils_squad
from core.errors import UsageError, first_line
from modeling_bert import BertForQuestionAnswering

LOADING_ERRORS = (OSError, ValueError, RuntimeError, KeyError, TypeError)
logger = logging.getLogger("loading")


@contextlib.contextmanager
def quiet_transformers():
    """transformers' load report (a coloured table) off while a folder loads, and its progress
    bars (one per weight load or save) off for the rest of the process: our own one line says
    what loaded, and stderr keeps our progress bars and errors."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logger = logging.getLogger("transformers")
    level = hf_logger.level
    hf_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hf_logger.setLevel(level)


def load_tokenizer(path, do_lower_case: bool = True):
    """The folder's fast tokenizer (offsets are needed), checked to lower-case as asked."""
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(path))
    except LOADING_ERRORS as e:
        raise UsageError(f"{path}: cannot load the tokenizer ({first_line(e)})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(f"{path}: a fast tokenizer (tokenizer.json or vocab.txt) is needed for offsets")
    utils_squad.check_lower_case(tokenizer, do_lower_case)
    return tokenizer


def load_model(path: str, config_name: str | None = None, fresh_token_scorers: bool = False,
               **config_overrides) -> BertForQuestionAnswering:
    """The folder's model in float32, its config changed by ``config_overrides``;
    ``fresh_token_scorers``: the learned criterion's scorers start untrained instead of loading."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(config_name or path)
    for key, value in config_overrides.items():  # transformers 5 drops unknown config kwargs
        setattr(config, key, value)
    # float32 master weights whatever the checkpoint's storage dtype: transformers 5 otherwise
    # loads a bf16/fp16 checkpoint in that dtype, and AdamW would then update half-precision
    # weights (speed comes from --bf16/--fp16 autocast instead).
    with quiet_transformers():
        model, info = BertForQuestionAnswering.from_pretrained(path, config=config, dtype=torch.float32,
                                                               output_loading_info=True,
                                                               fresh_token_scorers=fresh_token_scorers)
    if info["missing_keys"]:
        logger.warning("%s: %s not in the checkpoint, initialised at random (expected when starting from "
                       "a model without a QA head: training learns them)", path, ", ".join(sorted(info["missing_keys"])))
    return model


def load_model_checked(path: str, flag: str, *args, **kwargs) -> BertForQuestionAnswering:
    """``load_model``, with any failure to read the folder as one line naming it."""
    try:
        return load_model(path, *args, **kwargs)
    except LOADING_ERRORS as e:
        raise UsageError(f"{flag} {path}: cannot load the model ({first_line(e)})") from None
