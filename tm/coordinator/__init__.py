"""The coordinator: worker registry, due-task timer, dispatcher, lease reaper."""
