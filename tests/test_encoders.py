"""Encoders: timm, open_clip and Hugging Face vision towers, HF text towers, pooling, freezing, offline weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import SAMPLE_IMAGES, TINY_BERT, tiny_text, tiny_vision

from encoders.freezing import block_list, count_trainable, set_trainable
from encoders.text import HFTextEncoder, pool_tokens
from encoders.timm_encoder import TimmVisionEncoder
from encoders.types import Features
from multimodal.data.images import load_image

# Products of the committed sample (ids are file names).
WATCHES = ["10397", "16771", "16779", "18529", "18530"]
SHOES = ["1636", "3461", "4478", "3246", "4852", "6432"]


def photos(ids: list[str], transform) -> torch.Tensor:
    return torch.stack([transform(load_image(SAMPLE_IMAGES / f"{i}.jpg")) for i in ids])


# ------------------------------------------------------------------------------------------------------------ timm
def test_timm_cnn_tokens_and_pooled_on_real_photos() -> None:
    enc = tiny_vision(image_size=64).eval()
    x = photos(WATCHES[:2] + SHOES[:2], enc.image_transform(train=False))
    assert x.shape == (4, 3, 64, 64)
    with torch.no_grad():
        out = enc(x)
    assert isinstance(out, Features)
    assert enc.output_dim == 256
    assert out.tokens.shape == (4, 4, 256)  # 64 px / stride 32 = 2 x 2 grid
    assert out.mask.dtype == torch.bool and out.mask.all()
    # The pooled vector of a CNN is the global average of its grid tokens.
    torch.testing.assert_close(out.pooled, out.tokens.mean(1))
    # Different photos give different features; the eval transform is deterministic.
    assert not torch.allclose(out.pooled[0], out.pooled[2])
    x2 = photos(WATCHES[:1], enc.image_transform(train=False))
    assert torch.equal(x2[0], x[0])


def test_timm_vit_tokens_and_cls_pooling() -> None:
    torch.manual_seed(0)
    enc = TimmVisionEncoder("test_vit", image_size=64, model_kwargs={"img_size": 64}).eval()
    x = photos(SHOES[:2], enc.image_transform(train=False))
    with torch.no_grad():
        out = enc(x)
    n_patches = (64 // 16) ** 2
    assert out.tokens.shape[0] == 2 and out.tokens.shape[-1] == enc.output_dim == 64
    assert out.tokens.shape[1] >= n_patches + 1  # class token (+ registers) + patches
    torch.testing.assert_close(out.pooled, out.tokens[:, 0])  # token pooling takes the class token


def test_timm_train_transform_is_random_eval_is_not() -> None:
    enc = tiny_vision(image_size=64)
    image = load_image(SAMPLE_IMAGES / f"{SHOES[0]}.jpg")
    train_tf, eval_tf = enc.image_transform(True), enc.image_transform(False)
    torch.manual_seed(0)
    a = train_tf(image)
    torch.manual_seed(1)
    b = train_tf(image)
    assert a.shape == b.shape == (3, 64, 64)
    assert not torch.equal(a, b)
    assert torch.equal(eval_tf(image), eval_tf(image))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_local_weights_file_round_trip(tmp_path: Path, suffix: str) -> None:
    source = tiny_vision(seed=1).eval()
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)  # wrapped the way training scripts save it
    torch.manual_seed(2)
    loaded = TimmVisionEncoder("test_efficientnet", checkpoint_path=str(path), image_size=64).eval()
    fresh = tiny_vision(seed=2).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x).pooled, source(x).pooled)
        assert not torch.allclose(fresh(x).pooled, source(x).pooled)


def test_timm_rejects_unknown_model_and_wrong_weights(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no_such_net"):
        TimmVisionEncoder("no_such_net")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        TimmVisionEncoder("test_efficientnet", checkpoint_path=str(tmp_path / "missing.pth"))
    vit = TimmVisionEncoder("test_vit")
    path = tmp_path / "vit.pth"
    torch.save(vit.model.state_dict(), path)
    with pytest.raises(ValueError, match="do not fit"):
        TimmVisionEncoder("test_efficientnet", checkpoint_path=str(path))


# -------------------------------------------------------------------------------------------------------- open_clip
TINY_CLIP = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_clip(name: str, seed: int = 0, **kwargs):
    from encoders.open_clip_encoder import OpenClipVisionEncoder

    torch.manual_seed(seed)
    return OpenClipVisionEncoder(name, model_config=TINY_CLIP, **kwargs)


def test_open_clip_custom_config_tokens_in_output_space() -> None:
    enc = tiny_clip("test-tiny-vit-a").eval()
    x = photos(WATCHES[:1] + SHOES[:2], enc.image_transform(train=False))
    assert x.shape == (3, 3, 32, 32)
    with torch.no_grad():
        out = enc(x)
    assert enc.output_dim == 24
    assert out.pooled.shape == (3, 24)
    assert out.tokens.shape == (3, (32 // 8) ** 2, 24)  # patch tokens, projected to the embedding width
    assert out.mask.all()
    # The tokens are the patch outputs of the tower, projected like its pooled vector.
    visual = enc.visual
    with torch.no_grad():
        pooled, raw = visual(x)
    torch.testing.assert_close(out.tokens, raw @ visual.proj)
    torch.testing.assert_close(out.pooled, pooled)
    assert not torch.allclose(out.pooled[1], out.pooled[2])


def test_open_clip_local_checkpoint_round_trip(tmp_path: Path) -> None:
    import open_clip

    name = "test-tiny-vit-b"
    tiny_clip(name)  # registers the custom config under this name
    torch.manual_seed(3)
    full = open_clip.create_model(name).eval()
    path = tmp_path / "clip_checkpoint.pt"
    torch.save({"state_dict": full.state_dict()}, path)

    loaded = tiny_clip(name, seed=4, pretrained=str(path)).eval()
    other = tiny_clip(name, seed=4).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = full.visual(x)  # (B, D): the stock tower returns only the pooled embedding
        assert torch.equal(loaded(x).pooled, expected)
        assert not torch.allclose(other(x).pooled, expected)


def test_open_clip_errors(tmp_path: Path) -> None:
    from encoders.open_clip_encoder import OpenClipVisionEncoder

    with pytest.raises(ValueError, match="no-such-clip"):
        OpenClipVisionEncoder("no-such-clip")
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        tiny_clip("test-tiny-vit-c", pretrained=str(tmp_path / "absent.pt"))


# ------------------------------------------------------------------------------------------------ HF vision model
@pytest.fixture
def tiny_hf_vit(tmp_path: Path) -> Path:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    ViTModel(config).save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    return tmp_path / "vit"


def test_hf_vision_encoder_from_local_directory(tiny_hf_vit: Path) -> None:
    from transformers import ViTModel

    from encoders.hf_vision import HFVisionEncoder

    enc = HFVisionEncoder(str(tiny_hf_vit)).eval()
    x = photos(SHOES[:2], enc.image_transform(train=False))
    assert x.shape == (2, 3, 32, 32)
    with torch.no_grad():
        out = enc(x)
        ref = ViTModel.from_pretrained(str(tiny_hf_vit)).eval()(pixel_values=x)
    assert enc.output_dim == 32
    assert out.tokens.shape == (2, 1 + 16, 32)
    torch.testing.assert_close(out.tokens, ref.last_hidden_state)
    torch.testing.assert_close(out.pooled, ref.pooler_output)
    assert out.mask.all()
    # The transform is picklable (DataLoader workers).
    import pickle

    tf = pickle.loads(pickle.dumps(enc.image_transform(False)))
    image = load_image(SAMPLE_IMAGES / f"{SHOES[0]}.jpg")
    assert torch.equal(tf(image), x[0])


def test_hf_vision_last_blocks_trainable(tiny_hf_vit: Path) -> None:
    from encoders.hf_vision import HFVisionEncoder

    enc = HFVisionEncoder(str(tiny_hf_vit), trainable=1)
    layers = block_list(enc.model)
    assert layers is not None and len(layers) == 2
    after = [enc.model.layernorm, enc.model.pooler]  # registered after the layer stack: the trained tail
    expected = sum(p.numel() for m in [layers[-1], *after] for p in m.parameters())
    assert count_trainable(enc) == expected
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert not any(p.requires_grad for p in enc.model.embeddings.parameters())


# ------------------------------------------------------------------------------------------------------ text models
def test_tiny_bert_text_encoder_values() -> None:
    enc = tiny_text(pooling="mean").eval()
    assert enc.output_dim == TINY_BERT["hidden_size"]
    assert enc.model.config.num_hidden_layers == 2
    batch = enc.tokenize(["black leather watch", "a much longer title of a cotton slim fit shirt"])
    assert batch["input_ids"].shape[1] <= 16
    with torch.no_grad():
        out = enc(**batch)
    mask = batch["attention_mask"].bool()
    assert torch.equal(out.mask, mask)
    assert not mask[0].all()  # the short title is padded
    manual = (out.tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(out.pooled, manual)
    # Padding does not change a text's pooled vector: encoded alone it is the same.
    with torch.no_grad():
        alone = enc(**enc.tokenize(["black leather watch"]))
    torch.testing.assert_close(out.pooled[0], alone.pooled[0], atol=1e-5, rtol=1e-5)


def test_random_init_is_seeded_and_keeps_tokenizer() -> None:
    a, b, c = tiny_text(seed=0), tiny_text(seed=0), tiny_text(seed=1)
    wa = a.model.embeddings.word_embeddings.weight
    assert torch.equal(wa, b.model.embeddings.word_embeddings.weight)
    assert not torch.equal(wa, c.model.embeddings.word_embeddings.weight)
    assert a.tokenizer.vocab_size == wa.shape[0] == 30522
    assert a.model.pooler is None  # never used; would break DDP with unused parameters


@pytest.fixture
def tiny_gpt2(tmp_path: Path) -> Path:
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    from encoders.pretrained import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    GPT2Model(config).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    return tmp_path / "gpt2"


def test_decoder_only_text_encoder_last_token_pooling(tiny_gpt2: Path) -> None:
    enc = HFTextEncoder(str(tiny_gpt2), pooling="last", max_length=16).eval()
    assert type(enc.model).__name__ == "GPT2Model"
    assert enc.output_dim == 32
    batch = enc.tokenize(["men's analog watch", "cotton t-shirt with a round neck and short sleeves"])
    with torch.no_grad():
        out = enc(**batch)
    lengths = batch["attention_mask"].sum(1)
    assert lengths[0] < lengths[1]
    torch.testing.assert_close(out.pooled[0], out.tokens[0, lengths[0] - 1])
    torch.testing.assert_close(out.pooled[1], out.tokens[1, lengths[1] - 1])
    with torch.no_grad():
        alone = enc(**enc.tokenize(["men's analog watch"]))
    torch.testing.assert_close(out.pooled[0], alone.pooled[0], atol=1e-5, rtol=1e-5)


def test_decoder_only_last_n_blocks_include_final_norm(tiny_gpt2: Path) -> None:
    enc = HFTextEncoder(str(tiny_gpt2), pooling="last", trainable=1)
    model = enc.model
    expected = sum(p.numel() for p in model.h[-1].parameters()) + sum(p.numel() for p in model.ln_f.parameters())
    assert count_trainable(enc) == expected


def test_text_encoder_rejects_unknown_pooling() -> None:
    with pytest.raises(ValueError, match="pooling"):
        tiny_text(pooling="median")


# ---------------------------------------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("pooling", ["mean", "max", "last", "cls"])
def test_pool_tokens_ignores_padding(pooling: str) -> None:
    torch.manual_seed(0)
    tokens = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    pooled = pool_tokens(tokens, mask, pooling)
    poisoned = tokens.masked_fill(~mask[..., None], 1e6)
    assert torch.equal(pool_tokens(poisoned, mask, pooling), pooled)
    expected = {
        "mean": torch.stack([tokens[0, :3].mean(0), tokens[1].mean(0), tokens[2, 0]]),
        "max": torch.stack([tokens[0, :3].amax(0), tokens[1].amax(0), tokens[2, 0]]),
        "last": torch.stack([tokens[0, 2], tokens[1, 4], tokens[2, 0]]),
        "cls": tokens[:, 0],
    }[pooling]
    torch.testing.assert_close(pooled, expected)


# ---------------------------------------------------------------------------------------------------------- freezing
def test_set_trainable_false_true_and_last_blocks() -> None:
    enc = TimmVisionEncoder("test_vit")
    model = enc.model
    total = sum(p.numel() for p in model.parameters())
    set_trainable(model, False)
    assert count_trainable(model) == 0
    set_trainable(model, True)
    assert count_trainable(model) == total
    assert block_list(model) is model.blocks
    tail = sum(p.numel() for m in (model.norm, model.fc_norm, model.head) for p in m.parameters())
    for n in (1, 2):
        set_trainable(model, n)
        expected = sum(p.numel() for b in list(model.blocks)[-n:] for p in b.parameters()) + tail
        assert count_trainable(model) == expected
        assert not model.patch_embed.proj.weight.requires_grad
        assert not model.blocks[0].attn.qkv.weight.requires_grad
    set_trainable(model, 0)
    assert count_trainable(model) == 0
    # Through the encoder's own switch, and on a CNN whose blocks are stages.
    cnn = TimmVisionEncoder("test_efficientnet", trainable=1)
    stages = cnn.model.blocks
    head = sum(p.numel() for m in (cnn.model.conv_head, cnn.model.bn2) for p in m.parameters())
    assert count_trainable(cnn) == sum(p.numel() for p in stages[-1].parameters()) + head


@pytest.mark.parametrize("trainable", [False, 1])
def test_frozen_batch_norms_keep_running_statistics_in_training(trainable: bool | int) -> None:
    """train() must not turn a frozen CNN into another function: frozen batch norms use and keep their running
    statistics; those of trained stages still train."""
    torch.manual_seed(0)
    enc = TimmVisionEncoder("test_efficientnet", trainable=trainable)
    frozen_bn = enc.model.bn1
    assert enc.training and not frozen_bn.training  # from construction on: Lightning never calls train()
    before = {k: v.clone() for k, v in enc.state_dict().items() if "running" in k}
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        reference = enc.eval()(x).pooled
        trained = enc.train()(x).pooled
    assert enc.training and not frozen_bn.training
    after = {k: v for k, v in enc.state_dict().items() if "running" in k}
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    if trainable is False:
        assert not moved
        torch.testing.assert_close(trained, reference)
    else:
        assert enc.model.bn2.training  # the trained tail's batch norm trains
        assert moved and all(k.startswith(("model.blocks.4", "model.bn2")) for k in moved), sorted(moved)
        assert not any(k.startswith("model.bn1") for k in moved)
    set_trainable(enc, True)  # unfreezing gives the batch norms back to training
    assert frozen_bn.training
    assert not enc.eval().model.bn2.training


def test_text_last_block_and_frozen() -> None:
    enc = tiny_text(trainable=1)
    layers = enc.model.encoder.layer
    assert count_trainable(enc) == sum(p.numel() for p in layers[-1].parameters())
    assert count_trainable(tiny_text(trainable=False)) == 0


def test_set_trainable_without_blocks_is_an_error() -> None:
    with pytest.raises(ValueError, match="no block stack"):
        set_trainable(torch.nn.Linear(3, 3), 2)


# ------------------------------------------------------------------------------------------- offline pretrained
# ImageNet classes: analog clock, digital watch, stopwatch, wall clock;
# running shoe, clog, loafer, sandal, cowboy boot.
WATCH_CLASSES = {409, 531, 826, 892}
SHOE_CLASSES = {770, 502, 630, 774, 514}


@pytest.mark.slow
def test_efficientnet_lite0_key_mapping_classifies_products() -> None:
    import timm
    from timm.data import create_transform, resolve_model_data_config

    from encoders.pretrained import EfficientNetLiteEncoder
    from encoders.weights import efficientnet_lite_timm_state

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = efficientnet_lite_timm_state(model)
    assert len(state) == len(model.state_dict()) == 296
    model.load_state_dict(state)
    model.eval()
    transform = create_transform(**resolve_model_data_config(model), is_training=False)
    with torch.no_grad():
        watch_p = model(photos(WATCHES, transform)).softmax(-1)
        shoe_p = model(photos(SHOES, transform)).softmax(-1)
    assert set(watch_p.argmax(-1).tolist()) <= WATCH_CLASSES
    assert set(shoe_p.argmax(-1).tolist()) <= SHOE_CLASSES
    assert (watch_p[:, sorted(WATCH_CLASSES)].sum(-1) > 0.5).all()
    assert (shoe_p[:, sorted(SHOE_CLASSES)].sum(-1) > 0.5).all()

    # The encoder the configs use carries the same weights: its pooled vector is the classifier's input.
    enc = EfficientNetLiteEncoder(variant=0, image_size=224).eval()
    x = photos(SHOES[:2], enc.image_transform(False))
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(enc(x).pooled, pre_logits)


@pytest.mark.slow
def test_minilm_pretrained_similarity() -> None:
    from encoders.pretrained import MiniLMTextEncoder

    enc = MiniLMTextEncoder(pooling="mean").eval()
    assert enc.output_dim == 384
    texts = ["black leather watch", "men's analog watch", "cotton t-shirt"]
    with torch.no_grad():
        pooled = torch.nn.functional.normalize(enc(**enc.tokenize(texts)).pooled, dim=-1)
    sim = pooled @ pooled.T
    assert sim[0, 1] > sim[0, 2] + 0.1
    assert sim[0, 1] > 0.45

    # Mean pooling under the mask is what sentence-transformers does with this model.
    from sentence_transformers import SentenceTransformer

    from encoders.pretrained import minilm_path

    reference = SentenceTransformer(str(minilm_path()), device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(pooled, torch.nn.functional.normalize(reference, dim=-1), atol=1e-4, rtol=1e-4)
