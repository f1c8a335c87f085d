"""pipeline.core.teacher: the routes registry and the one place a routed teacher is built."""
import pytest
import torch
from torch import nn

from pipeline.core import backbone, teacher
from pipeline.core.fields import GuidedField, RoutedField
from pipeline.data import world
from tests.conftest import repo_cfg


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x, t, cond):
        return self.w * x


def test_a_setting_s_routes_take_the_registry_s_buckets_in_its_order():
    settings = repo_cfg().settings
    t2i_edit = teacher.routes(settings["t2i_edit"])
    assert t2i_edit == [teacher.Route("t2i", "base", ("t2i",)), teacher.Route("edit", "edit", ("local_edit", "global_edit"))]
    assert teacher.buckets(t2i_edit) == ["t2i", "local_edit", "global_edit"]
    assert [r.name for r in teacher.routes(settings["local_global"])] == ["local_edit", "global_edit"]
    assert teacher.routes(settings["realism"]) == [teacher.Route("t2i", "realism", ("t2i",))]


def test_route_index_sends_every_bucket_to_its_route_and_realism_prompts_to_the_t2i_route():
    settings = repo_cfg().settings
    assert teacher.route_index(teacher.routes(settings["t2i_edit"])) == {
        "t2i": 0, "local_edit": 1, "global_edit": 1, "realism": 0}
    assert teacher.route_index(teacher.routes(settings["local_global"])) == {"local_edit": 0, "global_edit": 1}
    assert teacher.route_index(teacher.routes(settings["local_global"]), fallback=0) == {
        "local_edit": 0, "global_edit": 1, "t2i": 0, "realism": 0}  # evaluating its teacher on T2I prompts


def test_build_teacher_freezes_each_model_once_in_route_order():
    shared, other = Toy(), Toy()
    field = teacher.build_teacher({"t2i": other, "local_edit": shared, "global_edit": shared},
                                  ["t2i", "local_edit", "global_edit"], "hard")
    assert isinstance(field, RoutedField) and field.mode == "hard"
    assert [f.model for f in field.fields] == [other, shared, shared]
    assert field.fields[1] is field.fields[2]
    assert not any(p.requires_grad for p in shared.parameters()) and not shared.training
    with pytest.raises(ValueError, match="global_edit"):
        teacher.build_teacher({"t2i": other}, ["t2i", "global_edit"])


def test_guidance_wraps_the_routed_field_and_needs_the_null_text():
    null = torch.zeros(4, 8), torch.zeros(8)
    field = teacher.build_teacher({"a": Toy()}, ["a"], "soft", guidance=3.5, null=null)
    assert isinstance(field, GuidedField) and field.scale == 3.5 and isinstance(field.field, RoutedField)
    with pytest.raises(ValueError, match="null"):
        teacher.build_teacher({"a": Toy()}, ["a"], guidance=3.5)


def test_load_teacher_loads_each_source_once(tmp_path, monkeypatch):
    torch.manual_seed(0)
    for name in ("base", "edit"):
        backbone.build("tiny", 4, 8, 8).save(tmp_path / name)
    loads = []
    real_load = backbone.load
    monkeypatch.setattr(backbone, "load", lambda folder, **kw: loads.append(folder) or real_load(folder, **kw))
    routes = [teacher.Route("t2i", "base", ("t2i",)), teacher.Route("local_edit", "edit", ("local_edit",)),
              teacher.Route("global_edit", "edit", ("global_edit",))]
    field = teacher.load_teacher(routes, {"base": tmp_path / "base", "edit": tmp_path / "edit"}, torch.device("cpu"))
    assert sorted(p.name for p in loads) == ["base", "edit"] and field.fields[1] is field.fields[2]
    with pytest.raises(ValueError, match=r"route t2i: no checkpoint for source 'base'"):
        teacher.load_teacher(routes, {"edit": tmp_path / "edit"}, torch.device("cpu"))
