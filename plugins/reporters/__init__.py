"""Built-in reporters: console, JSON, JUnit XML, HTML."""
