//! thu-coai ESConv.json: support strategies normalised, survey scores, feedback.
