"""Test oracle: MMMU-Pro's official prompt, image and answer code, copied verbatim (test-only).

Source: https://github.com/MMMU-Benchmark/MMMU (Apache License 2.0, Copyright the MMMU authors),
commit bb0b95a945998d91dfef37e969e07d49d1139438 (2025-05-19), folder ``mmmu-pro/``:

* ``infer/infer_transformers.py``: ``replace_images_tokens``, ``parse_options``, ``construct_prompt``,
  ``mmmu_doc_to_text``, ``origin_mmmu_doc_to_visual``, ``vision_mmmu_doc_to_visual``,
  ``process_prompt`` and the conversation built in ``run_inference_on_dataset``
  (:func:`conversation`, the lines between "Construct conversation" and "Preprocess inputs").
  ``prompt_config`` is a module global there, read from ``prompts.yaml``; here it is :data:`PROMPTS`
  (the file's content) and :func:`use_mode` sets it.
* ``infer/infer_gpt.py``: its ``replace_images_tokens`` (``"<image>"`` instead of ``"[image]"``), as
  :func:`gpt_replace_images_tokens`.
* ``evaluate.py``: ``parse_multi_choice_response``, ``get_multi_choice_info`` and
  ``mmmu_process_results`` (its answer reading).
* lmms-eval (https://github.com/EvolvingLMMs-Lab/lmms-eval, Apache License 2.0), commit
  75571cfe0fa36ca5ec2e6aa2bb268f9d38295af3, ``lmms_eval/tasks/mmmu_pro/utils.py``:
  ``mmmu_pro_doc_to_visual`` (with its ``construct_prompt``), as :func:`lmms_eval_doc_to_visual`.

Only ``yaml.safe_load``, the file reading and the model calls are left out. The function bodies
are unchanged; nothing in ``mech`` imports this module.
"""

import ast
import random
import re

import numpy as np

# mmmu-pro/prompts.yaml, verbatim
PROMPTS = {
    "cot": {
        "vision": "Write out the multiple-choice question in the image and then solve it. The last line of your response should be of the following format: 'Answer: $LETTER' (without quotes) where LETTER is one of options. Think step by step before answering.",  # noqa: E501
        "standard": "Answer the preceding multiple choice question. The last line of your response should be of the following format: 'Answer: $LETTER' (without quotes) where LETTER is one of options. Think step by step before answering.",  # noqa: E501
    },
    "direct": {
        "vision": "Answer with the option letter from the given choices directly. The last line of your response should be of the following format: 'Answer: $LETTER' (without quotes) where LETTER is one of options.",  # noqa: E501
        "standard": "Answer with the option letter from the given choices directly.",
    },
}

prompt_config = PROMPTS["direct"]


def use_mode(mode):
    """``prompt_config = yaml.safe_load(file)[args.mode]`` of infer_transformers.py's main."""
    global prompt_config
    prompt_config = PROMPTS[mode]


# ----------------------------------------------------------- infer/infer_transformers.py (verbatim)

def replace_images_tokens(input_string):
    image_order = [int(num) for num in re.findall(r"<image\s+(\d+)>", input_string)]
    input_string = re.sub(r"<image\s+\d+>", "[image]", input_string)
    return input_string, image_order


def parse_options(options):
    option_letters = [chr(ord("A") + i) for i in range(len(options))]
    choices_str = "\n".join([f"{option_letter}. {option}" for option_letter, option in zip(option_letters, options)])
    return choices_str


def construct_prompt(doc):
    question = doc["question"]
    parsed_options = parse_options(ast.literal_eval(str(doc["options"])))
    question = f"{question}\n{parsed_options}\n{prompt_config['standard']}"
    return question


def mmmu_doc_to_text(doc):
    question = construct_prompt(doc)
    return replace_images_tokens(question)


def origin_mmmu_doc_to_visual(doc, image_order):
    visual = []
    for idx in image_order:
        visual.append(doc[f"image_{idx}"])
    return visual


def vision_mmmu_doc_to_visual(doc):
    return [doc["image"]]


def process_prompt(data, dataset_variant):
    if "standard (10 options)" in dataset_variant:
        prompt, image_order = mmmu_doc_to_text(data)
        images = origin_mmmu_doc_to_visual(data, image_order)
    elif "vision" in dataset_variant:
        prompt = prompt_config["vision"]
        images = vision_mmmu_doc_to_visual(data)
    return (prompt, images)


def conversation(prompt, images):
    """The ``conversation`` of ``run_inference_on_dataset`` (verbatim lines)."""
    # Construct conversation with one (initial) utterance
    utterance = {
        "role": "user",
        "content": [{"type": "text", "text": prompt}],
    }
    for image in images:
        utterance["content"].append({"type": "image", "image": image})

    conversation = [utterance]
    return conversation


# ------------------------------------------------------------------- infer/infer_gpt.py (verbatim)

def gpt_replace_images_tokens(input_string):
    image_order = [int(num) for num in re.findall(r'<image\s+(\d+)>', input_string)]
    input_string = re.sub(r'<image\s+\d+>', '<image>', input_string)
    return input_string, image_order


# ----------------------------------------------------------------------------- evaluate.py (verbatim)

def mmmu_process_results(results):
    pred = results['response']
    if isinstance(pred, dict):
        pred = ''

    index2ans, all_choices = get_multi_choice_info(ast.literal_eval(str(results["options"])))
    parsed_pred = parse_multi_choice_response(pred, all_choices, index2ans)

    id = results["id"]
    if parsed_pred == results["answer"]:
        if_right = True
    else:
        if_right = False

    results['pred_indexs'] = parsed_pred
    results['if_right'] = if_right

    return results


def parse_multi_choice_response(response, all_choices, index2ans):
    """
    Parse the prediction from the generated response.
    Return the predicted index, e.g., A, B, C, D.
    https://github.com/MMMU-Benchmark/MMMU/blob/51ce7f3e829c16bb44bc5445782686b4c3508794/eval/eval_utils.py#L10
    """
    last_answer_pos = response.rfind("Answer:")
    if last_answer_pos != -1:
        # Extract the string after "Answer:"
        answer_str = response[last_answer_pos + len("Answer:"):].strip()

        # Find a unique match in the options
        matching_options = [option for option in all_choices if option in answer_str]

        # If a unique match is found, return that option
        if len(matching_options) == 1:
            return matching_options[0]


    if isinstance(response, str):
        for char in [",", ".", "!", "?", ";", ":", "'"]:
            response = response.strip(char)
        response = " " + response + " "  # add space to avoid partial match
    else:
        print (response)
        response = ""


    index_ans = True
    ans_with_brack = False
    candidates = []
    for choice in all_choices:  # e.g., (A) (B) (C) (D)
        if f"({choice})" in response:
            candidates.append(choice)
            ans_with_brack = True

    if len(candidates) == 0:
        for choice in all_choices:  # e.g., A B C D
            if f"{choice} " in response:
                candidates.append(choice)

    if len(candidates) == 0:
        for choice in all_choices:  # e.g., A. B. C. D.
            if f"{choice}." in response:
                candidates.append(choice)

    # if all above doesn't get candidates, check if the content is larger than 5 tokens and try to parse the example
    if len(candidates) == 0 and len(response.split()) > 5:
        for index, ans in index2ans.items():
            if ans.lower() in response.lower():
                candidates.append(index)
                index_ans = False  # it's content ans.

    if len(candidates) == 0:  # still not get answer, randomly choose one.
        pred_index = random.choice(all_choices)
    elif len(candidates) > 1:
        start_indexes = []
        if index_ans:
            if ans_with_brack:
                for can in candidates:
                    index = response.rfind(f"({can})")
                    start_indexes.append(index)  # -1 will be ignored anyway
                # start_indexes = [generated_response.index(f'({can})') for can in candidates]
            else:
                for can in candidates:
                    index = response.rfind(f" {can} ")
                    start_indexes.append(index)
        else:
            for can in candidates:
                index = response.lower().rfind(index2ans[can].lower())
                start_indexes.append(index)
        # get the last one
        pred_index = candidates[np.argmax(start_indexes)]
    else:  # if only one candidate, use it.
        pred_index = candidates[0]

    return pred_index


def get_multi_choice_info(options):
    """
    Given the list of options for multiple choice question
    Return the index2ans and all_choices
    https://github.com/MMMU-Benchmark/MMMU/blob/51ce7f3e829c16bb44bc5445782686b4c3508794/eval/data_utils.py#L54
    """

    start_chr = "A"
    all_choices = []
    index2ans = {}
    for i, option in enumerate(options):
        index2ans[chr(ord(start_chr) + i)] = option
        all_choices.append(chr(ord(start_chr) + i))

    return index2ans, all_choices


# ------------------------------------------------- lmms-eval lmms_eval/tasks/mmmu_pro/utils.py (verbatim)

def lmms_eval_construct_prompt(doc, post_prompt="Answer with the option letter from the given choices directly."):
    question = doc["question"]
    # Weirdly, data["options"] is a string in MMMU Huggingface dataset
    parsed_options = parse_options(ast.literal_eval(doc["options"]))
    # parsed_options already prepends a newline so no need to add space here
    question = f"{question}\n{parsed_options}\n\n{post_prompt}"
    return question


def lmms_eval_doc_to_visual(doc):
    if "question" in doc and "options" in doc:  # original operation
        prompt = lmms_eval_construct_prompt(doc)
        image_tokens = re.findall(r"<image \d+>", prompt)
        # Remove <> and  swap space as _
        image_tokens = sorted(list(set([image_token.strip("<>").replace(" ", "_") for image_token in image_tokens])))
        visual = [doc[image_token].convert("RGB") for image_token in image_tokens]
    else:  # vision-only operation
        visual = [doc["image"].convert("RGB")]
    return visual
