"""App recipes: the stack file's ``[stack.app]`` section -> files and a compose project."""
