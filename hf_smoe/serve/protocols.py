"""The request bodies the server accepts, one model a protocol, as the real clients send them: OpenRLHF's remote
reward model (`/get_reward`), vLLM's pooling API as verl calls it (`/classify`, `/pooling`), Text Embeddings
Inference's `/predict` (what `huggingface_hub.InferenceClient.text_classification` posts), and the native
`/v1/rewards` and `/v1/users/{name}`. Foreign clients' extra keys are allowed (they send fields we do not use);
the native API forbids them, so a misspelt field is an error rather than ignored."""

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..features.encoding import unicode_problem


def unicode_text(text: str) -> str:
    problem = unicode_problem(text)
    if problem:
        raise ValueError(problem)
    return text


Text = Annotated[str, AfterValidator(unicode_text)]


class Message(BaseModel):
    """A chat message, as OpenAI and TRL write them."""

    model_config = ConfigDict(extra="allow")
    role: str
    content: Text


class RewardItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: Text | list[Message] = Field(description="the prompt as text or chat messages")
    response: Text
    user: str | None = Field(default=None, description="whose router scores it (None: the checkpoint's own)")


class RewardsRequest(BaseModel):
    """`POST /v1/rewards`."""

    model_config = ConfigDict(extra="forbid")
    items: list[RewardItem]
    explain: bool = False


class OpenRLHFRequest(BaseModel):
    """`POST /get_reward`: `query` is prompt + response rendered by the chat template (special tokens kept);
    `prompts` the rendered prompts; `labels` any dataset column (the users, with `--user-from labels`)."""

    model_config = ConfigDict(extra="allow")
    query: list[Text]
    prompts: list[Text] | None = None
    labels: list[Any] | None = None


class ClassifyRequest(BaseModel):
    """`POST /classify` (vLLM): `input` rendered text(s), or `messages` ending with the assistant's response;
    `use_activation` (older vLLM: `activation`, `softmax`) false for the raw reward; `user` routes the request."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    input: Text | list[Text] | None = None
    messages: list[Message] | None = None
    use_activation: bool | None = None
    activation: bool | None = None
    softmax: bool | None = None
    user: str | None = None

    def activated(self) -> bool:
        """vLLM's rule: the first of the flags given, default on (sigmoid for one label)."""
        for flag in (self.use_activation, self.activation, self.softmax):
            if flag is not None:
                return flag
        return True


class PoolingRequest(ClassifyRequest):
    """`POST /pooling` (vLLM) with `"task": "classify"`, the only task a reward model has."""

    task: Literal["classify"] | None = None


class PredictRequest(BaseModel):
    """`POST /predict` and `POST /` (TEI): `inputs` a rendered text, a [prompt, response] pair, or a batch of them;
    `raw_scores` (TEI) or `parameters.function_to_apply: "none"` (huggingface_hub) for the raw reward."""

    model_config = ConfigDict(extra="allow")
    inputs: Text | list[Text] | list[list[Text]]
    raw_scores: bool = False
    parameters: dict[str, Any] | None = None

    def activated(self) -> bool:
        function = (self.parameters or {}).get("function_to_apply")
        return not (self.raw_scores or function == "none")


class UserRequest(BaseModel):
    """`PUT /v1/users/{name}`: the user's labeled pairs (prompt, chosen, rejected, or any format `smoe adapt`
    reads), the adaptation method, how many pairs adapt (the rest measure it), and the seed of that choice."""

    model_config = ConfigDict(extra="forbid")
    pairs: list[dict[str, Any]] = Field(min_length=2)
    method: Literal["hedge", "hyre"] = "hedge"
    n: int | None = Field(default=None, ge=1)
    seed: int = Field(default=0, ge=0, lt=2**32)


def sigmoid(value: float) -> float:
    """The activation vLLM and TEI apply to a one-label classifier's score (numerically safe at both ends)."""
    if value >= 0:
        return 1.0 / (1.0 + math.exp(-value))
    exp = math.exp(value)
    return exp / (1.0 + exp)
