"""train.data.hub: whether the hub is reachable is decided without touching the network when the user said
offline, and otherwise by dialling the endpoint's own host and port."""
import pytest


@pytest.mark.parametrize("offline", ["1", "true", "ON", " yes "])
def test_offline_env_means_unreachable_without_touching_the_network(offline, monkeypatch):
    import train.data.hub

    def no_network(*args, **kwargs):
        raise AssertionError("connected although HF_HUB_OFFLINE is set")

    monkeypatch.setattr(train.data.hub.socket, "create_connection", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    assert train.data.hub.hub_reachable() is False


@pytest.mark.parametrize("endpoint, address", [
    ("http://mirror.local", ("mirror.local", 80)),
    ("https://mirror.local", ("mirror.local", 443)),
    ("https://mirror.local:8443/", ("mirror.local", 8443)),
    ("not a url", None),
])
def test_hub_probe_dials_the_endpoint_port(endpoint, address, monkeypatch):
    import contextlib

    import train.data.hub

    dialled = []
    monkeypatch.setattr(train.data.hub.socket, "create_connection",
                        lambda addr, timeout: dialled.append(addr) or contextlib.nullcontext())
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    assert train.data.hub.hub_reachable() is (address is not None)
    assert dialled == ([address] if address else [])


def _fake_hub(monkeypatch, splits: dict, reachable: bool = True) -> list:
    """datasets.load_dataset answering with `splits` ({split: (texts, labels)}), recording (path, config)."""
    import datasets

    import train.data.hub

    calls = []

    def load_dataset(path, name=None, streaming=False, **kwargs):
        calls.append((path, name))
        if not reachable:
            raise ConnectionError("offline")
        return datasets.DatasetDict({s: datasets.Dataset.from_dict({"text": t, "label": y})
                                     for s, (t, y) in splits.items()})
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # hub_corpus sets it when unreachable
    monkeypatch.setattr(train.data.hub, "hub_reachable", lambda: reachable)
    return calls


GLUE = {"train": (["a", "b", "c"], [0, 1, 0]), "validation": (["d", "e"], [1, 0]), "test": (["f", "g"], [-1, -1])}


def test_data_config_reaches_the_loader_and_validation_beats_a_label_less_test(monkeypatch):
    from train.data.corpus import open_corpus, to_split

    calls = _fake_hub(monkeypatch, GLUE)
    corpus = open_corpus("nyu-mll/glue", data_config="mrpc")
    assert calls == [("nyu-mll/glue", "mrpc")]
    assert to_split(corpus.eval).texts == ["d", "e"]  # not the test split, whose labels are all -1
    assert to_split(corpus.train).labels == [0, 1, 0]


@pytest.mark.parametrize("data, want", [("glue/mrpc", ("nyu-mll/glue", "mrpc")),
                                        ("super_glue/boolq", ("aps/super_glue", "boolq")),
                                        ("go_emotions/simplified", ("go_emotions", "simplified")),
                                        ("someone/news", ("someone/news", None))])
def test_an_alias_names_the_dataset_and_its_configuration(data, want, monkeypatch):
    from train.data.corpus import open_corpus

    calls = _fake_hub(monkeypatch, GLUE)
    open_corpus(data)
    assert calls == [want]


def test_a_conflicting_config_and_a_label_less_only_test_split_are_refused(monkeypatch):
    from train.data.corpus import open_corpus
    from train.errors import UserError

    _fake_hub(monkeypatch, GLUE)
    with pytest.raises(UserError, match=r"--data glue/mrpc means nyu-mll/glue with configuration mrpc, but "
                                        r"--data-config is cola"):
        open_corpus("glue/mrpc", data_config="cola")
    with pytest.raises(UserError, match=r"--data-config mrpc is for a hub dataset, not local files"):
        open_corpus("ag_news_sample", data_config="mrpc")
    _fake_hub(monkeypatch, {s: GLUE[s] for s in ("train", "test")})
    with pytest.raises(UserError, match=r"its test split has no labels \(all -1\).*\(--data DIR\)"):
        open_corpus("glue/mrpc")


def test_offline_a_configured_dataset_is_one_line_naming_the_local_alternative(monkeypatch):
    from train.data.corpus import open_corpus
    from train.errors import HubUnreachable

    _fake_hub(monkeypatch, GLUE, reachable=False)
    with pytest.raises(HubUnreachable, match=r"^cannot fetch dataset 'nyu-mll/glue' configuration 'mrpc': the "
                                             r"Hugging Face hub is unreachable.*\(--data DIR ") as e:
        open_corpus("glue/mrpc")
    assert "\n" not in str(e.value)


def test_data_config_flag_and_its_validation():
    from train.__main__ import config_from_args, parser
    from train.config import TrainConfig

    assert config_from_args(parser().parse_args(["--data", "nyu-mll/glue", "--data-config", "mrpc"])
                            ).data_config == "mrpc"
    with pytest.raises(ValueError, match=r"data_config must be a hub dataset's configuration name, without "
                                         r"train_file/eval_file, got 'mrpc'"):
        TrainConfig(data_config="mrpc", train_file="a.csv", eval_file="b.csv")


def test_a_runs_data_config_reaches_the_hub_through_load_data(monkeypatch):
    from train.config import TrainConfig
    from train.data.splits import load_data

    calls = _fake_hub(monkeypatch, GLUE)
    load_data(TrainConfig(data="nyu-mll/glue", data_config="mrpc", model="m"))
    assert calls == [("nyu-mll/glue", "mrpc")]  # the flag was accepted but never passed on before


def test_a_hub_datasets_features_say_its_kind(monkeypatch):
    """GoEmotions' `labels` (a list of ClassLabel) is multi-label, STS-B's float `label` a regression."""
    import datasets

    import train.data.hub
    from train.data.corpus import open_corpus, to_split

    def load_dataset(path, name=None, streaming=False, **kwargs):
        if path == "go_emotions":
            features = datasets.Features({"text": datasets.Value("string"), "labels": datasets.Sequence(
                datasets.ClassLabel(names=["joy", "anger", "neutral"]))})
            rows = {"train": (["yay", "grr", "ok"], [[0], [1, 0], [2]]), "validation": (["fine", "ugh"], [[2], [1]])}
            return datasets.DatasetDict({s: datasets.Dataset.from_dict({"text": t, "labels": y}, features=features)
                                         for s, (t, y) in rows.items()})
        rows = {"train": (["a b", "c d"], ["b a", "d d"], [3.8, 0.5]), "validation": (["e"], ["f"], [5.0])}
        return datasets.DatasetDict({s: datasets.Dataset.from_dict({"sentence1": a, "sentence2": b, "label": y})
                                     for s, (a, b, y) in rows.items()})
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(train.data.hub, "hub_reachable", lambda: True)
    go = open_corpus("go_emotions/simplified")
    assert go.task == "multi_label" and go.label_names == ["joy", "anger", "neutral"]
    assert to_split(go.train).labels == [b"\x01\x00\x00", b"\x01\x01\x00", b"\x00\x00\x01"]
    sts = open_corpus("glue/stsb")
    assert sts.task == "regression" and sts.label_names == ["score"]
    assert to_split(sts.train).texts == [("a b", "b a"), ("c d", "d d")] and to_split(sts.eval).labels == [5.0]
