"""agentmx: give an AI agent its own email on a Postfix server you already run.

What is shared by the milter (agentmx.milter), the pipe program (agentmx.deliver) and the CLI
lives here: configuration, DNS. Importing the package does no work.
"""
__version__ = "0.1.0"
