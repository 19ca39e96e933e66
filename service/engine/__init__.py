"""The request pipeline: validation and cost, admission, batching, the text loop. Knows
nothing of HTTP; imports model/ and imaging/."""
