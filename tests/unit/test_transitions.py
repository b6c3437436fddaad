"""The transition index (``models.TRANSITIONS``) names functions that exist, one per action."""

from __future__ import annotations

import inspect

from django.utils.module_loading import import_string

from django_durably.models import TRANSITIONS


def test_transitions__every_row_names_a_function():
    for transition in TRANSITIONS:
        performer = import_string(transition.performed_by)

        assert inspect.isfunction(performer), transition
        assert performer.__module__ == transition.performed_by.rpartition(".")[0], transition


def test_transitions__each_action_once():
    actions = [transition.action for transition in TRANSITIONS]

    assert len(actions) == len(set(actions))
