"""Models: architecture options, tokenizer check, freezing, parameter groups, label checks."""
import pytest
import torch

from repro.data import load
from repro.errors import LabelRangeError, UnknownNameError
from repro.models import build_model, text_classifier, vgg


@pytest.mark.parametrize("depth,channels,size", [(11, 1, 28), (13, 3, 32), (16, 1, 32)])
def test_vgg_variants_forward(depth, channels, size):
    m = vgg(num_classes=7, depth=depth, in_channels=channels, image_size=size, width=0.125, seed=0).eval()
    x = torch.rand(3, channels, size, size)
    assert m(pixel_values=x).shape == (3, 7)
    convs = [mod for mod in m.features_net if isinstance(mod, torch.nn.Conv2d)]
    assert len(convs) == depth - 3  # VGG-d has d-3 conv layers + 3 FC in torchvision; here fc, classifier
    assert convs[0].in_channels == channels
    assert torch.allclose(m.features(pixel_values=x) @ m.classifier.weight.T + m.classifier.bias, m(pixel_values=x),
                          atol=1e-5)


def test_vgg_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = vgg(num_classes=10, width=0.125, seed=1)
    after = torch.rand(1)
    b = vgg(num_classes=10, width=0.125, seed=1)
    c = vgg(num_classes=10, width=0.125, seed=2)
    assert torch.equal(before, after)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


def test_vgg_bad_config():
    with pytest.raises(UnknownNameError):
        vgg(depth=12)
    with pytest.raises(UnknownNameError, match="model kind"):
        build_model({"kind": "resnet"})


def test_param_groups_vgg():
    m = vgg(num_classes=10, width=0.125)
    assert m.param_group("last") == ["classifier.weight", "classifier.bias"]
    assert len(m.param_group("all")) == len(list(m.parameters()))
    assert m.param_group(["fc", "classifier.bias"]) == ["fc.weight", "fc.bias", "classifier.bias"]
    with pytest.raises(UnknownNameError):
        m.param_group("embeddings")
    with pytest.raises(UnknownNameError):
        m.param_group(["nonexistent"])


def test_label_range_is_checked():
    m = vgg(num_classes=3, width=0.125)
    with pytest.raises(LabelRangeError, match="num_classes=10"):
        m.encode(load("mnist", n=50))


@pytest.fixture(scope="module")
def tm(minilm_spec):
    return build_model({**minilm_spec, "num_classes": 3}, seed=0)


def test_text_classifier_tokenizer_and_groups(tm):
    assert len(tm.tokenizer) == tm.encoder.config.vocab_size == 30522
    assert tm.param_group("embeddings") == ["encoder.embeddings.word_embeddings.weight"]
    assert tm.param_group("last") == ["classifier.weight", "classifier.bias"]
    assert tm.tokenizer.convert_ids_to_tokens([101, 102, 0]) == ["[CLS]", "[SEP]", "[PAD]"]
    assert set(tm.special_token_ids()) >= {0, 101, 102}


def test_text_encode_pairs_and_padding_trim(tm):
    ds = load("snli", "test", n=6, seed=0)
    batch = tm.encode(ds)
    assert batch.inputs["input_ids"].shape == (6, 48)
    ids0 = batch.inputs["input_ids"][0]
    assert ids0[0] == 101 and (ids0 == 102).sum() == 2  # [CLS] premise [SEP] hypothesis [SEP]
    assert set(batch.inputs["token_type_ids"][0].tolist()) == {0, 1}
    mb = batch[[0, 1]]
    assert mb.inputs["input_ids"].shape[1] == int(batch.inputs["attention_mask"][[0, 1]].sum(1).max())
    tm.eval()
    with torch.no_grad():  # trimming padding does not change the logits
        full = tm(**batch[[0, 1, 2, 3, 4, 5]].inputs)
        pieces = torch.cat([tm(**batch[[i]].inputs) for i in range(6)])
    assert torch.allclose(full, pieces, atol=1e-4)


def test_text_freezing_lower_layers(minilm_spec):
    m = build_model({**minilm_spec, "train_top_layers": 2}, seed=0)
    trainable = m.param_group("trainable")
    assert all(n.startswith(("encoder.encoder.layer.4.", "encoder.encoder.layer.5.", "encoder.pooler.", "classifier."))
               for n in trainable)
    assert any(n.startswith("encoder.encoder.layer.4.") for n in trainable)
    assert not m.encoder.embeddings.word_embeddings.weight.requires_grad
    with pytest.raises(ValueError):
        build_model({**minilm_spec, "train_top_layers": 9})


def test_text_attn_implementation_selectable(minilm_spec):
    m = build_model({**minilm_spec, "attn_implementation": "sdpa"}, seed=0)
    assert m.encoder.config._attn_implementation == "sdpa"


def test_unknown_text_model_is_a_clear_error():
    from repro.errors import ReproError
    with pytest.raises(ReproError, match="could not load text model"):
        text_classifier(num_classes=2, model_name="/nonexistent/model/dir")
