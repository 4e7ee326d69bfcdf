"""Constants shared by the astrid-anthropic tests (a module name no other suite uses)."""

TEST_KEY = "sk-ant-test-9f3c1d7e-never-printed"
"""The key the fake server expects; tests grep for it wherever it must not appear."""
