"""Jinja chat templates for the tiny model zoo, shaped like each family's real template.

Every template takes ``messages`` whose ``content`` is a string or a list of
``{"type": "image"}`` / ``{"type": "video"}`` / ``{"type": "audio"}`` / ``{"type": "text", "text": ...}``
items, and honours ``add_generation_prompt``. Role markers are special tokens of the tiny tokenizer.
"""

from __future__ import annotations

__all__ = ["TEMPLATES"]


def _chatml(image: str, video: str = "", system: str | None = None, audio: str = "") -> str:
    """ChatML (``<|im_start|>role\\n ... <|im_end|>\\n``), as Qwen / LLaVA-OneVision / InternVL."""
    sys_block = (
        "{% if loop.first and message['role'] != 'system' %}"
        "<|im_start|>system\n" + system + "<|im_end|>\n{% endif %}"
        if system
        else ""
    )
    return (
        "{% set audio_count = namespace(value=0) %}"
        "{% for message in messages %}" + sys_block + "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for content in message['content'] %}"
        "{% if content['type'] == 'image' %}"
        + image
        + "{% elif content['type'] == 'video' %}"
        + video
        + "{% elif content['type'] == 'audio' %}{% set audio_count.value = audio_count.value + 1 %}"
        + audio
        + "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
        "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def _items(image: str, text: str = "{{ content['text'] }}", video: str = "") -> str:
    return (
        "{% if message['content'] is string %}"
        + text.replace("content['text']", "message['content']")
        + "{% else %}{% for content in message['content'] %}"
        "{% if content['type'] == 'image' %}"
        + image
        + "{% elif content['type'] == 'video' %}"
        + video
        + "{% elif content['type'] == 'text' %}"
        + text
        + "{% endif %}{% endfor %}{% endif %}"
    )


TEMPLATES: dict[str, str] = {
    # llava-1.5-hf: "USER: <image>\n<prompt> ASSISTANT:" (images first, then text)
    "llava": (
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}USER: {% elif message['role'] == 'assistant' %}ASSISTANT: {% endif %}"
        "{% if message['content'] is string %}{{ message['content'] }} {% else %}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}<image>\n{% endfor %}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }} {% endfor %}"
        "{% endif %}{% if message['role'] == 'assistant' %}</s>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    ),
    # llava-v1.6-mistral-hf: "[INST] <image>\n<prompt> [/INST]"
    "llava_next": (
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}[INST] {% endif %}"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}<image>\n{% endfor %}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
        "{% endif %}{% if message['role'] == 'user' %} [/INST]{% else %}</s>{% endif %}{% endfor %}"
    ),
    "llava_onevision": _chatml("<image>\n", "<video>\n"),
    "qwen2_vl": _chatml(
        "<|vision_start|><|image_pad|><|vision_end|>",
        "<|vision_start|><|video_pad|><|vision_end|>",
        system="You are a helpful assistant.",
    ),
    "qwen2_5_vl": _chatml(
        "<|vision_start|><|image_pad|><|vision_end|>",
        "<|vision_start|><|video_pad|><|vision_end|>",
        system="You are a helpful assistant.",
    ),
    "qwen3_vl": _chatml(
        "<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>"
    ),
    "internvl": _chatml("<IMG_CONTEXT>\n", "<video>\n"),
    "qwen2_audio": _chatml(
        "",
        system="You are a helpful assistant.",
        audio="Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n",
    ),
    # gemma-3: "<bos><start_of_turn>user\n<start_of_image><prompt><end_of_turn>\n<start_of_turn>model\n"
    "gemma3": (
        "<bos>{% for message in messages %}"
        "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
        + _items("<start_of_image>")
        + "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    ),
    # Idefics3 (llama-3 tokenizer): "<|begin_of_text|>User:<image><prompt><end_of_utterance>\nAssistant:"
    "idefics3": (
        "<|begin_of_text|>{% for message in messages %}{{ message['role'] | capitalize }}:"
        + _items("<image>", " {{ content['text'] }}")
        + "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
    ),
    # SmolVLM: "<|im_start|>User:<image><prompt><end_of_utterance>\nAssistant:"
    "smolvlm": (
        "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
        + _items("<image>", " {{ content['text'] }}", "<video>")
        + "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
    ),
    # PaliGemma has no chat format: "<image>...<prompt>"; the processor inserts <bos> after the last
    # image and "\n" at the end (the prefix-LM prompt).
    "paligemma": "{% for message in messages %}{% if message['role'] == 'user' %}"
    + _items("<image>")
    + "{% endif %}{% endfor %}",
    # Llama-3.2-Vision: header tokens, <|image|> before the text
    "mllama": (
        "<|begin_of_text|>{% for message in messages %}"
        "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
        + _items("<|image|>")
        + "<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
}
