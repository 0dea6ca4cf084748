"""The Examples in the public docstrings run and print what they claim."""

import doctest
import importlib
import re

import pytest


MODULES = ["configuration_i2moe", "fusion_i2moe", "towers_i2moe", "modeling_i2moe", "processing_i2moe", "dmil_i2moe",
           "dmil_training", "hub", "i2m2_i2moe", "experts_i2moe", "interpretation", "synthetic",
           "attribution"]


class FencedDocTestParser(doctest.DocTestParser):
    """Docstrings follow the transformers style of Markdown code fences; a closing fence would
    otherwise be read as expected output."""

    def parse(self, string, name="<string>"):
        return super().parse(re.sub(r"^\s*```(python)?\s*$", "", string, flags=re.MULTILINE), name)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"i2moe.{name}")
    finder = doctest.DocTestFinder(parser=FencedDocTestParser())
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [test for test in finder.find(module) if test.examples]
    for test in tests:
        runner.run(test)
    assert tests, f"{name} has no docstring examples"
    assert runner.failures == 0, f"{runner.failures} failing docstring example(s) in {name}"
